"""lookalike-export on a real trained model, real Parquet and a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lookalike.cli.budget import main as budget_main
from lookalike.errors import ConfigError, DataError
from lookalike.export.app import CONFIG_DIR
from lookalike.export.app import run as export
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.mechanisms import gaussian_sigma
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run as train
from tests.conftest import files_under, make_cfg


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """One DP model trained on the small demo data; exports share its MLflow store and ledger."""
    out = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(demo_dir, out, "trainer.epochs=3", "privacy.target_epsilon=4", "owner.epsilon=50")
    train(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    return out, logged.info.run_id


def export_cfg(demo_dir: Path, trained, target: Path, *overrides: str):
    out, run_id = trained
    base = [
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        f"export.model={run_id}",
        f"export.output_dir={target}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="export", overrides=base + list(overrides))


def segment(target: Path, audience: str, size) -> list[dict]:
    return pq.read_table(target / f"audience={audience}" / f"size={size}").to_pylist()


def seed_ids(demo_dir: Path, audience: str) -> set[str]:
    rows = [json.loads(line) for line in (demo_dir / "seed.jsonl").read_text().splitlines()]
    return {r["user_id"] for r in rows if r["audience"] == audience}


def test_percentage_bins_write_nested_ranked_segments_without_seed_users(demo_dir, trained, tmp_path):
    target = tmp_path / "segments"
    report = export(export_cfg(demo_dir, trained, target, "export.audience_size.bins=[5,10,50]"))
    for audience in ("luxury", "sports"):
        rows = {b: segment(target, audience, b) for b in (5, 10, 50)}
        assert [len(rows[b]) for b in (5, 10, 50)] == [200, 400, 2000]  # of 4000 users
        top = rows[50]
        assert [r["rank"] for r in top] == list(range(1, 2001))
        assert all(a["score"] >= b["score"] for a, b in zip(top, top[1:]))
        assert [r["user_id"] for r in rows[5]] == [r["user_id"] for r in top[:200]]  # bins are prefixes
        assert not {r["user_id"] for r in top} & seed_ids(demo_dir, audience)
        bins = report["audiences"][audience]["bins"]
        assert [b["requested_size"] for b in bins] == [200, 400, 2000] and all(b["segment"] == "written" for b in bins)
        assert [b["relevance"] for b in bins] == sorted([b["relevance"] for b in bins], reverse=True) and bins[0]["relevance"] > 1
    saved = json.loads((target / "report.json").read_text())
    assert saved == json.loads(json.dumps(report)) and (target / "report.png").stat().st_size > 10_000
    counts = [v for a in saved["audiences"].values() for v in [a["held_out_seed_users"]] + [b["segment_size"] for b in a["bins"]]]
    assert all(c is None or c >= 100 for c in counts)
    assert saved["privacy"]["noise_std"] > 0 and saved["privacy"]["trusted"] is False
    # per audience: held-out count, hits per bin, segment size per bin (exact exclusion): each
    # moves by at most 1 for one user, over 2 audiences
    assert saved["privacy"]["l2_sensitivity"] == pytest.approx((2 * (1 + 3 + 3)) ** 0.5)
    assert saved["privacy"]["noise_std"] == pytest.approx(gaussian_sigma(0.5, 1e-6, (2 * 7) ** 0.5))
    # the report's epsilon was charged, next to the training run's
    entries = [Ledger(trained[0] / "privacy_ledger.sqlite").entry(i) for i in (1, saved["privacy"]["ledger_entry_id"])]
    assert [e["kind"] for e in entries] == ["train", "export"] and entries[1]["spent_epsilon"] == 0.5
    assert entries[0]["fingerprint"] == entries[1]["fingerprint"]
    client = MlflowClient(resolve_tracking_uri(f"sqlite:///{trained[0]}/mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id], "tags.`lookalike.kind` = 'export'")
    assert runs and runs[0].data.tags["lookalike.training_run_id"] == trained[1]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"report.json", "report.png"}


def test_trusted_report_gives_exact_recall_and_suppresses_small_bins(demo_dir, trained, tmp_path):
    target = tmp_path / "segments"
    report = export(
        export_cfg(demo_dir, trained, target, "trusted_evaluation=true", "export.audience_size.type=ABSOLUTE", "export.audience_size.bins=[50,400,4000]")
    )
    luxury = report["audiences"]["luxury"]
    assert luxury["held_out_seed_users"] is None or luxury["held_out_seed_users"] >= 100
    first = luxury["bins"][0]
    assert first["segment"].startswith("not written") and first["segment_size"] is None  # 50 < 100
    assert not (target / "audience=luxury" / "size=50").exists() and (target / "audience=luxury" / "size=400").is_dir()
    assert report["privacy"]["trusted"] and report["privacy"]["noise_std"] == 0
    largest = luxury["bins"][2]
    assert largest["segment_size"] == len(segment(target, "luxury", 4000))  # every non-seed user, exact in trusted mode
    assert largest["population_share"] == 1.0 and (largest["recall"] in (None, 1.0))


def test_include_seed_puts_seed_users_first_and_min_score_thresholds(demo_dir, trained, tmp_path):
    target = tmp_path / "with_seed"
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    (before,) = ledger.status()
    # The exact seed list in the segments is the owners' call, off by default: refused, nothing
    # written or charged, until they allow it.
    with pytest.raises(ConfigError, match="export.include_seed_in_output.*not allowed by the data owners' rules"):
        export(export_cfg(demo_dir, trained, target, "export.include_seed_in_output=true", "export.audience_size.bins=[20]"))
    assert not target.exists() and ledger.status() == [before]
    budget_main(["--ledger", str(ledger.location), "set-rules", before.fingerprint[:12], "--allow-seed-in-output"])
    export(export_cfg(demo_dir, trained, target, "export.include_seed_in_output=true", "export.audience_size.bins=[20]"))
    rows = segment(target, "sports", 20)
    seed = seed_ids(demo_dir, "sports")
    flags = [r["user_id"] in seed for r in rows]
    n_seed = sum(flags)
    assert n_seed > 25 and all(flags[:n_seed]) and not any(flags[n_seed:])
    plain, cut = tmp_path / "plain", tmp_path / "cut"
    export(export_cfg(demo_dir, trained, plain, "export.audience_size.bins=[50]"))
    threshold = segment(plain, "sports", 50)[499]["score"]
    export(export_cfg(demo_dir, trained, cut, f"export.min_score={threshold}", "export.audience_size.bins=[50]"))
    scores = [r["score"] for r in segment(cut, "sports", 50)]
    assert min(scores) >= threshold and 500 <= len(scores) < 510


def test_streaming_in_small_batches_gives_identical_segments(demo_dir, trained, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    export(export_cfg(demo_dir, trained, one, "export.batch_rows=100000", "export.audience_size.bins=[10]"))
    export(export_cfg(demo_dir, trained, many, "export.batch_rows=333", "export.audience_size.bins=[10]"))
    for audience in ("luxury", "sports"):
        a, b = segment(one, audience, 10), segment(many, audience, 10)
        assert [r["user_id"] for r in a] == [r["user_id"] for r in b]
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-6)


def test_report_only_when_list_output_is_off(demo_dir, trained, tmp_path):
    target = tmp_path / "report_only"
    export(export_cfg(demo_dir, trained, target, "rules.allow_list_output=false"))
    assert sorted(p.name for p in target.iterdir()) == [".lookalike-export", "report.json", "report.png"]


def test_randomized_exclusion_is_charged_per_audience(demo_dir, trained, tmp_path):
    target = tmp_path / "rr"
    report = export(
        export_cfg(demo_dir, trained, target, "export.seed_exclusion=randomized", "export.seed_exclusion_epsilon=1.0", "export.audience_size.bins=[100]")
    )
    entry = Ledger(trained[0] / "privacy_ledger.sqlite").entry(report["privacy"]["ledger_entry_id"])
    assert entry["spent_epsilon"] == pytest.approx(0.5 + 2 * 1.0)
    rows = segment(target, "luxury", 100)
    seed = seed_ids(demo_dir, "luxury")
    # at epsilon 1 about 27% of seed users stay in, and about 27% of the others are dropped
    assert 0 < sum(r["user_id"] in seed for r in rows) < len(seed) and len(rows) < 4000


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["export.model=0123456789abcdef0123456789abcdef"], ConfigError, "config 'export.model'"),
        (["export.model=models:/no-such-model/1"], ConfigError, "config 'export.model'"),
        (["export.audience_size.bins=[0,5]"], ConfigError, "export.audience_size.bins"),
        (["export.audience_size.bins=[101]"], ConfigError, "percentage from 1 to 100"),
        (["export.audience_size.type=ABSOLUTE", "export.audience_size.bins=[20000001]"], ConfigError, "1 to 20,000,000"),
        ([f"export.audience_size.bins=[{','.join(str(i) for i in range(1, 27))}]"], ConfigError, "give 1 to 25"),
        (["export.audience_size.type=RELATIVE"], ConfigError, "export.audience_size.type"),
        (["export.audiences=[golfers]"], ConfigError, "'golfers' is not an audience"),
        (["export.shard.collective_timeout_minutes=-1"], ConfigError, "config 'export.shard.collective_timeout_minutes'"),
    ],
)
def test_bad_export_input_fails_before_any_work(demo_dir, trained, tmp_path, overrides, error, message):
    target = tmp_path / "segments"
    ledger_before = Ledger(trained[0] / "privacy_ledger.sqlite").status()
    with pytest.raises(error, match=message):
        export(export_cfg(demo_dir, trained, target, *overrides))
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".segments")]
    assert Ledger(trained[0] / "privacy_ledger.sqlite").status() == ledger_before


def test_publisher_missing_a_model_column_is_refused(demo_dir, trained, tmp_path):
    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table().drop_columns(["age"])
    pq.write_table(table, tmp_path / "pub.parquet")
    with pytest.raises(DataError, match="has no column 'age', which model .* was trained on"):
        export(export_cfg(demo_dir, trained, tmp_path / "seg", f"data.publisher_path={tmp_path / 'pub.parquet'}"))
    assert not (tmp_path / "seg").exists()


def test_output_dir_must_be_empty_or_overwritten_and_writable(demo_dir, trained, tmp_path):
    target = tmp_path / "segments"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="export.output_dir.*not empty.*export.overwrite=true"):
        export(export_cfg(demo_dir, trained, target))
    assert files_under(target) == [target / "keep.txt"]
    with pytest.raises(ConfigError, match="holds files no export wrote"):  # overwrite replaces only an export
        export(export_cfg(demo_dir, trained, target, "export.overwrite=true"))
    assert files_under(target) == [target / "keep.txt"]
    (target / "keep.txt").unlink()
    export(export_cfg(demo_dir, trained, target, "export.audience_size.bins=[10]"))
    export(export_cfg(demo_dir, trained, target, "export.overwrite=true", "export.audience_size.bins=[5]"))
    assert (target / "report.json").exists() and (target / "audience=luxury" / "size=5").is_dir()
    assert not (target / "audience=luxury" / "size=10").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        export(export_cfg(demo_dir, trained, blocker / "segments"))


def test_latest_resolves_to_the_newest_training_run(demo_dir, trained, tmp_path):
    report = export(export_cfg(demo_dir, trained, tmp_path / "seg", "export.model=latest", "export.audience_size.bins=[10]"))
    assert report["model"]["training_run_id"] == trained[1]
    with pytest.raises(ConfigError, match="'latest': experiment 'nothing-here' has no finished training run"):
        export(export_cfg(demo_dir, trained, tmp_path / "seg2", "export.model=latest", "mlflow.experiment_name=nothing-here"))


def test_export_cli_prints_one_line_and_exits_2(demo_dir, trained, tmp_path):
    import subprocess
    import sys

    code = "import sys; from lookalike.export.app import cli; sys.argv = ['lookalike-export', *sys.argv[1:]]; cli()"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            f"paths.output_dir={trained[0]}",
            f"export.model={trained[1]}",
            f"export.output_dir={tmp_path / 'seg'}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "export.audience_size.bins=[0]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "lookalike-export: error: config 'export.audience_size.bins': 0 must be a percentage from 1 to 100 (PERCENTAGE)"
    ]
    assert not (tmp_path / "seg").exists() and not (tmp_path / "hydra").exists()


def test_reports_for_seeds_one_user_apart_differ_only_within_the_noise(demo_dir, trained, tmp_path):
    """Neighbouring seeds (one held-out user removed): no count in the report is exact, and
    every difference between the two reports is of the size of the DP noise."""
    rows = [json.loads(line) for line in (demo_dir / "seed.jsonl").read_text().splitlines()]
    report = export(export_cfg(demo_dir, trained, tmp_path / "a", "export.audience_size.bins=[5,10,50]"))
    import pyarrow as pa

    from lookalike.data.matching import split_draws

    publisher = set(ds.dataset(demo_dir / "publisher", partitioning="hive").to_table(columns=["user_id"]).column("user_id").to_pylist())
    luxury = [r["user_id"] for r in rows if r["audience"] == "luxury" and r["user_id"] in publisher]
    draws = split_draws(pa.array(luxury), 42)[:, 0]
    held = next(u for u, d in zip(luxury, draws) if d < 0.2)  # a held-out user: it moves the recall counts
    neighbour = tmp_path / "neighbour.jsonl"
    neighbour.write_text("".join(json.dumps(r) + "\n" for r in rows if r["user_id"] != held))
    other = export(export_cfg(demo_dir, trained, tmp_path / "b", "export.audience_size.bins=[5,10,50]", f"data.seed_path={neighbour}"))
    sigma = report["privacy"]["noise_std"]
    assert sigma > 10 and other["privacy"]["noise_std"] == sigma
    exact_counts_differ = 0
    for name in ("luxury", "sports"):
        a, b = report["audiences"][name], other["audiences"][name]
        pairs = [(a["held_out_seed_users"], b["held_out_seed_users"])] + [(x["segment_size"], y["segment_size"]) for x, y in zip(a["bins"], b["bins"])]
        for x, y in pairs:
            if x is not None and y is not None:
                assert abs(x - y) < 8 * sigma  # one user moves a true count by at most 1
                exact_counts_differ += x != y
    # fresh noise each time: released counts differ even where the true count did not move
    assert exact_counts_differ >= 4


@pytest.mark.parametrize("where", ["output", "publisher", "parent", "foreign"])
def test_overwrite_replaces_only_a_previous_export(demo_dir, trained, tmp_path, where):
    """export.overwrite=true pointed at the output folder deleted the ledger, the MLflow store
    and the runs; pointed at the data, the publisher table and the seed."""
    out = trained[0]
    target = {"output": out, "publisher": demo_dir / "publisher", "parent": out.parent, "foreign": tmp_path / "mine"}[where]
    if where == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("not an export")
    before = sorted(p for p in target.rglob("*"))
    with pytest.raises(ConfigError, match="export.output_dir") as err:
        export(export_cfg(demo_dir, trained, target, "export.overwrite=true"))
    assert re.search("holds files no export wrote" if where == "foreign" else "holds |is inside", str(err.value))
    assert sorted(p for p in target.rglob("*")) == before


def test_an_unreachable_tracking_server_shows_no_password_and_charges_nothing(demo_dir, trained, tmp_path):
    out, run_id = trained
    before = Ledger(out / "privacy_ledger.sqlite").status()
    code = "import sys; from lookalike.export.app import cli; sys.argv = ['lookalike-export', *sys.argv[1:]]; cli()"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            f"paths.output_dir={out}",
            f"data.publisher_path={demo_dir / 'publisher'}",
            f"data.seed_path={demo_dir / 'seed.jsonl'}",
            f"export.model={run_id}",
            f"export.output_dir={tmp_path / 'seg'}",
            "mlflow.tracking_uri=http://127.0.0.1:9",  # the password in the environment: one in the URL is refused (test_credentials.py)
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ
        | {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
            "MLFLOW_TRACKING_USERNAME": "alice",
            "MLFLOW_TRACKING_PASSWORD": "s3cret",
        },
    )
    assert proc.returncode == 2 and "s3cret" not in proc.stdout + proc.stderr and "http://127.0.0.1:9/" in proc.stderr
    assert Ledger(out / "privacy_ledger.sqlite").status() == before and not (tmp_path / "seg").exists()


def test_a_fully_suppressed_report_says_its_epsilon_is_charged(demo_dir, trained, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="lookalike.export"):
        report = export(export_cfg(demo_dir, trained, tmp_path / "seg", "rules.min_aggregation_size=1000000"))
    assert all(a["held_out_seed_users"] is None for a in report["audiences"].values())
    assert "every count in the report was suppressed" in caplog.text and "charged all the same" in caplog.text
    assert Ledger(trained[0] / "privacy_ledger.sqlite").entry(report["privacy"]["ledger_entry_id"])["spent_epsilon"] == 0.5


def test_export_picks_its_own_device(demo_dir, trained, tmp_path):
    before = Ledger(trained[0] / "privacy_ledger.sqlite").status()
    with pytest.raises(ConfigError, match="export.device"):
        export(export_cfg(demo_dir, trained, tmp_path / "seg", "export.device=tpu"))
    assert Ledger(trained[0] / "privacy_ledger.sqlite").status() == before and not (tmp_path / "seg").exists()
    report = export(export_cfg(demo_dir, trained, tmp_path / "seg", "export.device=cpu", "export.audience_size.bins=[5]"))
    assert report["audiences"]["luxury"]["bins"][0]["segment"] == "written"
