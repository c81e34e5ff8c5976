"""Every form of ``data.seed_path`` docs/getting-started.md shows, typed on the command line of real
``lookalike-train`` and ``lookalike-export`` processes: one file with an audience column, a list
of files (one audience each, named by the file stem) and a mapping audience -> file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from lookalike.privacy.ledger import Ledger
from tests.conftest import grant, untouched

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
EXPORT = "import sys; from lookalike.export.app import cli; sys.argv = ['lookalike-export', *sys.argv[1:]]; cli()"


def split_seed(demo_dir: Path, folder: Path) -> dict[str, list[str]]:
    """The demo seed's two audiences as JSON lines, CSV and Parquet files under ``folder`` (the
    file names docs/getting-started.md uses: b.jsonl, v.csv), and the ids of each."""
    rows = [json.loads(line) for line in (demo_dir / "seed.jsonl").read_text().splitlines()]
    first, second = sorted({r["audience"] for r in rows})
    ids = {name: [r["user_id"] for r in rows if r["audience"] == name] for name in (first, second)}
    (folder / "b.jsonl").write_text("".join(json.dumps({"user_id": i}) + "\n" for i in ids[first]))
    (folder / "v.csv").write_text("user_id\n" + "".join(f"{i}\n" for i in ids[second]))
    pq.write_table(pa.table({"user_id": ids[first]}), folder / "buyers.parquet")
    return {"b": ids[first], "v": ids[second]}


def train(demo_dir: Path, out: Path, seed_path: str, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "debug=default",
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={seed_path}",
        "privacy.target_epsilon=1",
        "trusted_evaluation=true",
        *extra,
    ]
    # cwd: the docs' relative file names (b.jsonl) are read from where the command runs
    return subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True, timeout=300, cwd=out.parent)


def training_runs(out: Path) -> list:
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("lookalike").experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_a_mapping_and_a_list_of_seed_files_train_and_export_from_the_command_line(demo_dir, tmp_path):
    split_seed(demo_dir, tmp_path)
    out = tmp_path / "out"
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher")
    mapping = "{buyers: b.jsonl, visitors: v.csv}"  # as docs/getting-started.md writes it
    for seed_path in (mapping, f"[{tmp_path / 'buyers.parquet'},{tmp_path / 'v.csv'}]"):
        proc = train(demo_dir, out, seed_path)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    runs = training_runs(out)
    assert [r.data.tags["lookalike.audiences"] for r in runs] == ["buyers,visitors", "buyers,v"]
    assert Ledger(out / "privacy_ledger.sqlite").status()[0].runs == 2
    # the export excludes each audience's seed users, read through the same mapping
    args = [
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={mapping}",
        "trusted_evaluation=true",
        f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}",
        f"ledger.path={out / 'privacy_ledger.sqlite'}",
        f"export.model={runs[0].info.run_id}",
        f"export.output_dir={tmp_path / 'segments'}",
    ]
    proc = subprocess.run([sys.executable, "-c", EXPORT, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    written = sorted(p.parent.parent.name for p in (tmp_path / "segments").rglob("part-0.parquet"))
    assert set(written) == {"audience=buyers", "audience=visitors"}


@pytest.mark.parametrize(
    ("seed_path", "message"),
    [
        ("{buyers: {nested: b.jsonl}}", "config 'data.seed_path': .* is not a file, a list of files or a mapping audience -> file"),
        ("[[b.jsonl]]", "config 'data.seed_path': .* is not a file, a list of files or a mapping audience -> file"),
        ("[b.jsonl,sub/b.jsonl]", "config 'data.seed_path': two seed files share a name"),
        ("{../up: b.jsonl}", "audience name '../up' is not allowed"),
    ],
)
def test_a_seed_path_of_no_documented_form_is_refused_in_one_line(demo_dir, tmp_path, seed_path, message):
    split_seed(demo_dir, tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text((tmp_path / "b.jsonl").read_text())
    out = tmp_path / "out"
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher")
    proc = train(demo_dir, out, seed_path)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lookalike-train: error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    untouched(out, out / "privacy_ledger.sqlite")
