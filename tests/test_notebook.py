"""notebooks/compare_runs.ipynb, executed for real on a tiny set of runs so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lookalike.training.train import run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


@pytest.mark.slow
def test_compare_runs_notebook_executes_on_real_runs(cfg_factory, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(cfg_factory("privacy.target_epsilon=1", out=out))
    run(cfg_factory("privacy.target_epsilon=3", "model=logistic", out=out))
    run(cfg_factory("privacy.enabled=false", "trusted_evaluation=true", out=out))
    monkeypatch.setenv("LOOKALIKE_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    monkeypatch.setenv("LOOKALIKE_EXPERIMENT", "lookalike")
    monkeypatch.setenv("LOOKALIKE_FIGURE", str(tmp_path / "compare.png"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "3 finished training runs in experiment 'lookalike'" in printed
    table = notebook.cells[2].outputs[0]["data"]["text/plain"]
    assert "logistic" in table and "two_tower" in table and "non-private" in table and "trusted (exact)" in table
    assert (tmp_path / "compare.png").stat().st_size > 10_000
