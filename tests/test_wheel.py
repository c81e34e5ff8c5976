"""The package as a user installs it: a wheel (no editable install) in a fresh virtual environment,
run from a folder outside the repo, with a config folder of the user's own."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cwd: Path, *command, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_installs_and_trains_exports_and_budgets_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    _run(ROOT, sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT)
    (wheel,) = dist.glob("lookalike-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "lookalike/conf/train.yaml",
        "lookalike/conf/export.yaml",
        "lookalike/conf/experiment/demo.yaml",
        "lookalike/data/uci_adult.parquet",
        "lookalike/py.typed",
    } <= names

    venv = tmp_path / "venv"
    _run(tmp_path, sys.executable, "-m", "venv", venv)
    _run(tmp_path, venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    # The dependencies come from the test environment (a plain path: its editable install of
    # lookalike is not picked up), after the wheel's own site-packages.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bin_ = venv / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(work, bin_ / "python", "-c", "import lookalike, lookalike.paths as p; print(lookalike.__file__, p.CONFIG_DIR)").stdout
    assert str(ROOT) not in where and str(venv) in where  # the installed copy, not the source tree

    # Real data shipped in the wheel; the user's own experiment, started from a shipped one.
    _run(work, bin_ / "lookalike-demo-data", "--dataset", "adult", "--output-dir", "adult")
    _run(work, bin_ / "lookalike-config", "cp", "experiment/adult", "my_configs/experiment/mine.yaml")
    mine = work / "my_configs" / "experiment" / "mine.yaml"
    mine.write_text(mine.read_text().replace("experiment_name: adult", "experiment_name: mine").replace("epochs: 10", "epochs: 1"))
    common = ["paths.output_dir=out", "data.publisher_path=adult/publisher.parquet", "data.seed_path=adult/seed.jsonl"]
    _run(
        work,
        bin_ / "lookalike-budget",
        "--ledger",
        "out/privacy_ledger.sqlite",
        "create",
        "--publisher",
        "adult/publisher.parquet",
        "--epsilon",
        "10",
        "--allow-trusted-evaluation",
    )
    _run(work, bin_ / "lookalike-train", "--config-dir", "my_configs", "experiment=mine", "trainer.progress_bar=false", "trainer.device=cpu", *common)
    _run(work, bin_ / "lookalike-export", "--config-dir", "my_configs", "experiment=mine", "export.model=latest", "export.audience_size.bins=[5]", *common)
    report = json.loads((work / "out" / "segments" / "report.json").read_text())
    assert report["audiences"]["high_income"]["bins"][0]["segment"] == "written"
    (budget,) = json.loads(_run(work, bin_ / "lookalike-budget", "--ledger", "out/privacy_ledger.sqlite", "--json").stdout)
    # the training run (epsilon 1 + 0.2 for the size and match counts); the experiment is trusted
    # (Adult is public), so the export's exact report charges nothing
    assert budget["runs"] == 1 and 1.0 < budget["spent_epsilon"] <= 1.2
    runs = _run(
        work,
        bin_ / "python",
        "-c",
        "import mlflow; mlflow.set_tracking_uri('sqlite:///out/mlflow.db'); print(len(mlflow.search_runs(experiment_names=['mine'])))",
    ).stdout
    assert runs.strip() == "2"  # training and export, in the user's own experiment
