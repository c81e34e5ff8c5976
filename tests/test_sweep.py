"""Budget-aware Optuna sweeps, run as a real multirun subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from lookalike.privacy.ledger import Ledger
from tests.conftest import grant

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"


def sweep(demo_dir, out, budget: float, trials: int) -> subprocess.CompletedProcess:
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher", budget)
    args = [
        "-m",
        "hparams_search=optuna",
        "debug=default",
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        "privacy.target_epsilon=1.0",
        # trusted runs check the seed size exactly: a small size release keeps the budget arithmetic below
        "privacy.size_epsilon=0.05",
        f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.sampler.n_startup_trials=2",
        # the tiny test data holds too few held-out users for a DP estimate: use exact metrics
        "trusted_evaluation=true",
    ]
    return subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sweep_that_runs_out_of_budget_ends_with_a_summary(demo_dir, tmp_path):
    # each trial reserves epsilon 1.05 (training + size estimate); one finished run composes to
    # about 1.0, so a second fits 2.2, and two compose to more than 1.15, so a third never does
    proc = sweep(demo_dir, tmp_path, budget=2.2, trials=3)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert "sweep summary: 2 trials finished, 1 refused or failed" in output
    assert "privacy budget exhausted" in output and "Best value:" in output
    (status,) = Ledger(tmp_path / "privacy_ledger.sqlite").status()
    assert status.spent_epsilon <= 2.2 and status.charged_epsilon <= status.spent_epsilon and status.runs == 2 and status.reserved_epsilon == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("lookalike.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all("trusted.auc" in c.data.metrics for c in children)
    assert parent.data.metrics["sweep.trials_finished"] == 2 and parent.data.metrics["sweep.trials_refused_or_failed"] == 1
    assert parent.data.metrics["sweep.best_value"] == max(c.data.metrics["trusted.auc"] for c in children)


@pytest.mark.slow
def test_sweep_the_budget_cannot_start_is_refused_in_one_line(demo_dir, tmp_path):
    proc = sweep(demo_dir, tmp_path, budget=0.5, trials=2)
    assert proc.returncode == 2
    assert "covers no trial of this sweep: the cheapest trial needs epsilon 1.05, 0.5 remains" in proc.stderr
    assert "Traceback" not in proc.stderr and Ledger(tmp_path / "privacy_ledger.sqlite").status()[0].runs == 0


@pytest.mark.slow
def test_parallel_trials_share_the_ledger_and_never_overspend(demo_dir, tmp_path):
    """Four trials, two at a time in separate processes (hydra/launcher=local_parallel, Hydra's
    joblib launcher), on a budget that holds two or three of them depending on how finished runs
    compose by the time a trial reserves: never more."""
    grant(tmp_path / "privacy_ledger.sqlite", demo_dir / "publisher", 2.5)
    args = [
        "-m",
        "hydra/launcher=local_parallel",
        "debug=default",
        f"paths.output_dir={tmp_path}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        "privacy.target_epsilon=1.0",
        "privacy.size_epsilon=0.05",
        "trusted_evaluation=true",
        "seed=1,2,3,4",
    ]
    proc = subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in output  # the trials really ran two at a time
    (status,) = Ledger(tmp_path / "privacy_ledger.sqlite").status()
    assert status.charged_epsilon <= 2.5 + 1e-9 and status.reserved_epsilon == 0
    assert status.runs in (2, 3) and status.spent_epsilon <= status.runs * 1.05
    # the summary counts every trial, although each ran (and reported) in a worker process
    assert f"sweep summary: {status.runs} trials finished, {4 - status.runs} refused or failed" in output


def test_the_slurm_preset_composes_onto_submitit(tmp_path):
    """No Slurm here: the preset is checked as configuration (Hydra resolves it onto the submitit
    launcher, with the cluster settings a trial needs)."""
    from hydra import compose, initialize_config_dir

    from lookalike.training.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.array_parallelism) == ("gpu", 1, 8)


@pytest.mark.slow
def test_a_single_run_is_no_trial(demo_dir, tmp_path):
    """The sweep callback stays quiet outside multiruns: no warning, no sweep folder."""
    grant(tmp_path / "privacy_ledger.sqlite", demo_dir / "publisher")
    args = [
        "debug=default",
        f"paths.output_dir={tmp_path}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        "privacy.target_epsilon=1.0",
        "trusted_evaluation=true",
    ]
    proc = subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "raised" not in proc.stderr and "Warning" not in proc.stderr
    assert not (tmp_path / "multiruns").exists() and len(list((tmp_path / "runs").iterdir())) == 1
