"""`torchrun --nproc_per_node=2 -m lookalike.training.train` on CPU (gloo): the same accounting as one
process with the same global batch, comparable utility, one ledger entry and one MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lookalike.privacy.ledger import Ledger
from tests.conftest import grant

# Seeds secrets.randbits (DP-SGD's noise and Poisson sample, the size release) from ENTROPY_BASE, 1000
# apart per rank, in the runs it is put before: the fixed_entropy fixture (tests/conftest.py) for
# subprocesses. Each launch takes its own base, so the two launches' noise differs.
FIXED_ENTROPY = """import itertools, os, secrets
_seeds = itertools.count(int(os.environ["ENTROPY_BASE"]) + 1000 * int(os.environ.get("RANK", "0")))
secrets.randbits = lambda bits: next(_seeds)
"""


def train_cli(
    demo_dir, out, launcher: list[str], *extra: str, budget: float = 1e5, exact_size: bool = True, entropy_from: Path | None = None, entropy_base: int = 1
) -> subprocess.CompletedProcess:
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher", budget)
    args = [
        *extra,
        "debug=default",
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        "privacy.target_epsilon=4.0",
        "trainer.epochs=4",
        "trainer.batch_size=64",
        "trusted_evaluation=true",
        "trainer.device=cpu",
    ]
    # a size estimate this precise is the exact size: both launches sample at the same rate
    args += ["privacy.size_epsilon=100"] if exact_size else []
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # one thread per rank: two ranks on a 2-core machine
    if entropy_from is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(entropy_from), env.get("PYTHONPATH")]))
        env["ENTROPY_BASE"] = str(entropy_base)
    return subprocess.run([*launcher, "-m", "lookalike.training.train", *args], capture_output=True, text=True, timeout=600, env=env)


def fixed_entropy_dir(tmp_path: Path) -> Path:
    """A folder whose sitecustomize.py seeds the run: with OS entropy, the DP runs below fell under
    their AUC bar of 0.7 about 1 run in 50 (mean 0.758, sd 0.026)."""
    folder = tmp_path / "fixed_entropy"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(FIXED_ENTROPY)
    return folder


def logged(out):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    return runs


@pytest.mark.slow
def test_two_processes_account_like_one_and_learn_alike(demo_dir, tmp_path):
    seeded = fixed_entropy_dir(tmp_path)
    single = train_cli(demo_dir, tmp_path / "single", [sys.executable], entropy_from=seeded)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = train_cli(
        demo_dir,
        tmp_path / "multi",
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
        entropy_from=seeded,
        entropy_base=10_001,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    (one,), (two,) = logged(tmp_path / "single"), logged(tmp_path / "multi")  # rank 1 logged nothing
    m1, m2 = one.data.metrics, two.data.metrics
    for key in ("privacy.epsilon_spent", "privacy.noise_multiplier", "privacy.sample_rate", "privacy.steps"):
        assert m1[key] == pytest.approx(m2[key], rel=1e-9), key
    assert m2["privacy.epsilon_spent"] <= 4.0
    # Different noise and samples, same mechanism: utility within the spread of DP training.
    assert m2["trusted.auc"] > 0.7 and abs(m1["trusted.auc"] - m2["trusted.auc"]) < 0.1
    entries = Ledger(tmp_path / "multi" / "privacy_ledger.sqlite").entries(two.data.tags["lookalike.fingerprint"])
    assert len(entries) == 1 and entries[0]["status"] == "spent"
    assert (
        json.loads(entries[0]["events"])[0]
        == json.loads(Ledger(tmp_path / "single" / "privacy_ledger.sqlite").entries(one.data.tags["lookalike.fingerprint"])[0]["events"])[0]
    )


@pytest.mark.slow
def test_a_refused_run_stops_every_rank(demo_dir, tmp_path):
    out = tmp_path / "out"
    first = train_cli(demo_dir, out, [sys.executable], budget=6, exact_size=False)
    assert first.returncode == 0, first.stderr[-3000:]
    before = Ledger(out / "privacy_ledger.sqlite").status()
    refused = train_cli(demo_dir, out, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], budget=6, exact_size=False)
    assert refused.returncode != 0 and "privacy budget exhausted" in refused.stderr
    assert "rank 0 stopped before training" in refused.stderr  # rank 1 neither hung nor trained
    assert len(logged(out)) == 1 and Ledger(out / "privacy_ledger.sqlite").status() == before


@pytest.mark.slow
def test_a_rank_without_row_groups_trains_and_canaries_count_once(demo_dir, tmp_path):
    """The window keeps one file (one row group): rank 1 reads nothing, yet samples and steps
    with rank 0, and the canaries that rank 0 alone trains on enter the sample rate once."""
    window = ["data.window.column=cohort", "data.window.start=2025-01", "data.window.end=2025-02", "audit=one_run", "audit.canaries=200"]
    single = train_cli(demo_dir, tmp_path / "single", [sys.executable], *window)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = train_cli(demo_dir, tmp_path / "multi", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], *window)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "rank 1 of 2 reads 0 of 1 row groups" in multi.stdout + multi.stderr
    (one,), (two,) = logged(tmp_path / "single"), logged(tmp_path / "multi")
    m1, m2 = one.data.metrics, two.data.metrics
    assert m1["trusted.training_examples"] == m2["trusted.training_examples"] < 1000
    for key in ("privacy.epsilon_spent", "privacy.noise_multiplier", "privacy.sample_rate", "privacy.steps", "audit.canaries"):
        assert m1[key] == pytest.approx(m2[key], rel=1e-9), key


@pytest.mark.slow
def test_randomised_response_set_by_hand_is_refused_under_torchrun_on_every_rank(demo_dir, tmp_path):
    """One draw of the labels on one process's rows: every rank refuses before anything is reserved."""
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    refused = train_cli(demo_dir, out, launcher, "privacy.mechanism=label_rr")
    assert refused.returncode != 0
    assert refused.stderr.count("label_rr trains in one process: run it without torchrun") == 2  # both ranks, each in one line
    assert not (out / "mlflow.db").exists() or logged(out) == []
    (budget,) = Ledger(out / "privacy_ledger.sqlite").status()
    assert (budget.runs, budget.reserved_epsilon, budget.charged_epsilon) == (0, 0.0, 0.0)
