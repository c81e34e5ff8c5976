"""Every bad input from the issue: one clear line naming the file, column or setting, and nothing
half-written (no ledger charge, no MLflow run, no output files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from lookalike.errors import LookalikeError
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run
from tests.conftest import files_under, untouched


def _publisher(tmp_path: Path, demo_dir: Path, change) -> Path:
    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table()
    path = tmp_path / "bad_publisher.parquet"
    pq.write_table(change(table), path)
    return path


def _with_nan(t: pa.Table) -> pa.Table:
    age = t.column("age").to_numpy().copy()
    age[7] = np.nan
    return t.set_column(t.column_names.index("age"), "age", pa.array(age))


CASES = {
    "missing publisher": (lambda tmp, demo: [f"data.publisher_path={tmp}/nope"], "does not exist: set data.publisher_path"),
    "missing seed": (lambda tmp, demo: [f"data.seed_path={tmp}/nope.jsonl"], "seed file .*nope.jsonl' does not exist"),
    "missing id column": (lambda tmp, demo: ["data.id_column=uid"], "has no id column 'uid': set data.id_column"),
    "absent declared feature": (lambda tmp, demo: ["data.features={numeric: [age, height]}"], "config 'data.features.numeric': column 'height'"),
    "duplicate user ids": (
        lambda tmp, demo: [f"data.publisher_path={_publisher(tmp, demo, lambda t: pa.concat_tables([t, t.slice(0, 1)]))}"],
        "column 'user_id' has duplicate user ids",
    ),
    "non-string ids": (
        lambda tmp, demo: [f"data.publisher_path={_publisher(tmp, demo, lambda t: t.set_column(0, 'user_id', pa.array(np.arange(t.num_rows))))}"],
        "id column 'user_id' has type int64: store ids as strings",
    ),
    "nan in numerics": (lambda tmp, demo: [f"data.publisher_path={_publisher(tmp, demo, _with_nan)}"], "numeric column 'age' has 1 NaN/inf values"),
    "empty seed": (lambda tmp, demo: [f"data.seed_path={_write(tmp / 'empty.csv', 'user_id' + chr(10))}"], "empty.csv' has no ids .*the seed is empty"),
    "seed below minimum, trusted": (
        lambda tmp, demo: ["rules.min_matching_seed_size=500", "trusted_evaluation=true"],
        "matches fewer than 500 publisher users",
    ),
    "optimizer argument": (lambda tmp, demo: ["+trainer.optimizer.betas=[2,3]"], "config 'trainer.optimizer': cannot be built .*beta"),
    "optimizer target": (lambda tmp, demo: ["trainer.optimizer._target_=torch.optim.NoSuchOptimizer"], "config 'trainer.optimizer': cannot be built"),
    # Hydra's target policy refuses it; its reason, wrapped over lines, is shown whole on one.
    "unsafe optimizer target": (
        lambda tmp, demo: ["trainer.optimizer._target_=os.system"],
        r"config 'trainer.optimizer': cannot be built \(Target 'os.system' is blocklisted because it allows config data to control executable",
    ),
    "model that cannot be built": (lambda tmp, demo: [f"model.embedding_dim={2**40}"], "config 'model': cannot be built .*fix its settings"),
    "epsilon zero": (lambda tmp, demo: ["privacy.target_epsilon=0"], "config 'privacy.target_epsilon'"),
    "delta too large": (lambda tmp, demo: ["privacy.target_delta=0.01"], "config 'privacy.target_delta': 0.01 must be in"),
    "negative rate": (lambda tmp, demo: ["data.negative_rate=-1"], "config 'data.negative_rate'"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly_before_any_work(case, cfg_factory, demo_dir, tmp_path):
    make_overrides, message = CASES[case]
    out = tmp_path / "out"
    cfg = cfg_factory(*make_overrides(tmp_path, demo_dir), out=out)
    with pytest.raises(LookalikeError, match=message) as err:
        run(cfg)
    assert "\n" not in str(err.value)
    untouched(out, cfg.ledger.path)


def test_budget_exceeded_charges_nothing_and_logs_no_run(cfg_factory, tmp_path):
    cfg = cfg_factory("privacy.target_epsilon=3", "owner.epsilon=2")
    with pytest.raises(LookalikeError, match="budget exhausted .* needs epsilon 5.2 but only 2 of 2 remains"):  # 3 + 2 (size, debug) + 0.2
        run(cfg)
    assert Ledger(cfg.ledger.path).status()[0].runs == 0  # the refused reservation rolled back whole
    assert not [p for p in files_under(tmp_path / "out") if p.name not in ("privacy_ledger.sqlite", "mlflow.db", "mlflow.db.lock")]


def test_cli_prints_one_line_exits_2_and_leaves_no_run_folder(demo_dir, tmp_path):
    out = tmp_path / "out"
    code = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "debug=default",
            f"paths.output_dir={out}",
            f"data.publisher_path={demo_dir / 'publisher'}",
            f"data.seed_path={demo_dir / 'seed.jsonl'}",
            "data.id_column=uid",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"lookalike-train: error: publisher data '{demo_dir / 'publisher'}' has no id column 'uid': set data.id_column "
        "(columns: user_id, age, income_k, sessions_30d, signal_00, signal_01, signal_02, signal_03, signal_04, signal_05, "
        "signal_06, signal_07, signal_08, signal_09, signal_10, signal_11, signal_12, device, country, city, interests, cohort)"
    ]
    assert not out.exists()  # no empty runs/ (nor the output folder) that the refused run made


def test_a_refused_run_leaves_an_existing_run_folder_as_it_was(demo_dir, tmp_path):
    """hydra.run.dir naming a folder of the operator's logs: a refused run deleted it whole."""
    logs = tmp_path / "applogs"
    (logs / "archive.log").mkdir(parents=True)
    for name in ("audit.log", "service.log", "archive.log/keep.txt"):
        (logs / name).write_text(name)
    code = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
    overrides = [f"paths.output_dir={tmp_path / 'out'}", f"data.publisher_path={demo_dir / 'publisher'}", f"data.seed_path={demo_dir / 'seed.jsonl'}"]
    args = [sys.executable, "-c", code, "debug=default", *overrides, f"hydra.run.dir={logs}", "privacy.target_epsilon=-1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "privacy.target_epsilon" in proc.stderr
    assert {p.relative_to(logs).as_posix(): p.read_text() for p in files_under(logs)} == {n: n for n in ("archive.log/keep.txt", "audit.log", "service.log")}


def test_a_diverging_run_stops_in_one_line_and_stays_charged(cfg_factory):
    """max_grad_norm=nan once trained NaN weights, logged the model, charged and exited 0."""
    cfg = cfg_factory("trainer.optimizer.lr=1e30", "privacy.target_epsilon=1")
    with pytest.raises(LookalikeError, match="training diverged in epoch 1: the loss or a weight is NaN/inf") as err:
        run(cfg)
    assert "\n" not in str(err.value)
    (status,) = Ledger(cfg.ledger.path).status()
    assert status.runs == 1 and status.reserved_epsilon > 0  # the data was touched: the reservation stays


def test_a_seed_of_every_publisher_user_trains_and_logs_its_model(cfg_factory, demo_dir, tmp_path):
    """No non-seed user is left for evaluation: it raised IndexError after training had spent its
    epsilon, and no model was logged. Refusing such a seed up front would read the seed for free."""
    ids = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table(columns=["user_id"]).column("user_id").to_pylist()
    seed = _write(tmp_path / "everyone.jsonl", "".join(json.dumps({"user_id": u}) + "\n" for u in ids))
    cfg = cfg_factory(f"data.seed_path={seed}")
    assert isinstance(run(cfg), float)  # NaN, unless the noisy histograms happen to count negatives
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.tags["lookalike.model_uri"]
    (status,) = Ledger(cfg.ledger.path).status()
    assert status.runs == 1 and status.reserved_epsilon == 0 and status.spent_epsilon > 0  # charged what it spent, nothing held
