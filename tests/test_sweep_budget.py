"""The sweep's budget pre-check asks for its cheapest trial, not for the multirun's own config
(which holds none of the swept values), in real ``lookalike-train -m`` processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.privacy.ledger import Ledger
from tests.conftest import grant

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"


def multirun(demo_dir: Path, out: Path, budget: float, *overrides: str, config_dir: Path | None = None) -> subprocess.CompletedProcess:
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher", budget)
    args = [
        *(["--config-dir", str(config_dir)] if config_dir else []),
        "-m",
        "debug=default",
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        # trusted runs check the seed size exactly: a small size release keeps the arithmetic below
        "privacy.size_epsilon=0.05",
        "trusted_evaluation=true",
        *overrides,
    ]
    return subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_sweep_of_small_epsilons_runs_on_a_budget_the_default_epsilon_exceeds(demo_dir, tmp_path):
    # each trial reserves 0.5 + 0.05; the multirun's own config (privacy.target_epsilon 3) would need 3.05
    proc = multirun(demo_dir, tmp_path, 2.0, "privacy.target_epsilon=0.5,0.5,0.5")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "sweep summary: 3 trials finished, 0 refused or failed" in output
    (status,) = Ledger(tmp_path / "privacy_ledger.sqlite").status()
    assert status.runs == 3 and status.charged_epsilon <= 2.0 and status.reserved_epsilon == 0


def test_a_sweep_no_trial_of_which_fits_is_refused_naming_its_cheapest_trial(demo_dir, tmp_path):
    proc = multirun(demo_dir, tmp_path, 1.0, "privacy.target_epsilon=2,1.5,4")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "covers no trial of this sweep: the cheapest trial needs epsilon 1.55, 1 remains" in proc.stderr
    assert "Traceback" not in proc.stderr and Ledger(tmp_path / "privacy_ledger.sqlite").status()[0].runs == 0


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_swept_groups_are_composed_and_a_search_space_counts_from_its_lower_end(demo_dir, tmp_path):
    """A swept config group (``privacy=dp,cheap``) is composed per choice; an Optuna interval
    counts from its lower end (above the default 0.2 here). The budget (0.5) is below every trial,
    so nothing trains."""
    conf = tmp_path / "conf"
    (conf / "privacy").mkdir(parents=True)
    (conf / "privacy" / "cheap.yaml").write_text("defaults:\n  - dp\n  - _self_\ntarget_epsilon: 0.6\n")
    (conf / "hparams_search").mkdir()
    search = "# @package _global_\ndefaults:\n  - optuna\n  - _self_\nhydra:\n  sweeper:\n    n_trials: 2\n    params:\n"
    (conf / "hparams_search" / "epsilons.yaml").write_text(search + "      evaluation.epsilon: interval(0.3, 1.0)\n")
    out = tmp_path / "out"
    proc = multirun(demo_dir, out, 0.5, "privacy=dp,cheap", config_dir=conf)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "the cheapest trial needs epsilon 0.65, 0.5 remains" in proc.stderr  # cheap.yaml's 0.6 + 0.05
    proc = multirun(demo_dir, out, 0.5, "hparams_search=epsilons", "trusted_evaluation=false", "privacy.target_epsilon=0.4", config_dir=conf)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "the cheapest trial needs epsilon 0.75, 0.5 remains" in proc.stderr  # 0.4 + 0.05 + the interval's 0.3
