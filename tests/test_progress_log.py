"""Progress bars only on a terminal: a CI or Slurm log of one run once held thousands of
carriage-return updates. The per-epoch log lines stay."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import grant

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_a_run_logged_to_a_file_has_epoch_lines_and_no_bar(demo_dir, tmp_path):
    grant(tmp_path / "privacy_ledger.sqlite", demo_dir / "publisher")
    args = [
        "debug=default",
        "trainer.progress_bar=true",  # asked for, but stderr is a pipe here, not a terminal
        f"paths.output_dir={tmp_path}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        "privacy.target_epsilon=1.0",
        "trusted_evaluation=true",
    ]
    proc = subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "\r" not in output and "it/s" not in output
    assert "epoch 1/2: steps" in output and "epoch 2/2: steps" in output
