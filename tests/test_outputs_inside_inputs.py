"""Everything a run writes stays outside its inputs (issue 22 item 4): the MLflow store and its
artifacts, the ledger, the Hydra run or sweep folder. A file written into the publisher folder
is read back as part of the table by every later run (which then reports the table corrupt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lookalike.errors import LookalikeError
from lookalike.export.app import CONFIG_DIR as EXPORT_CONFIG_DIR
from lookalike.export.app import run as export
from lookalike.training.train import run
from tests.conftest import files_under, grant, untouched


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files_under(folder)}


@pytest.fixture
def inputs(demo_dir, tmp_path) -> tuple[Path, Path]:
    """A copy of the demo publisher folder and seed that a run may read but must not write into."""
    publisher, seed = tmp_path / "pub", tmp_path / "seed.jsonl"
    shutil.copytree(demo_dir / "publisher", publisher)
    shutil.copy(demo_dir / "seed.jsonl", seed)
    return publisher, seed


TRAIN_CASES = {
    "MLflow SQLite store": ("mlflow.tracking_uri", lambda pub, seed: f"sqlite:///{pub}/mlflow.db", "inside data.publisher_path"),
    "MLflow file store": ("mlflow.tracking_uri", lambda pub, seed: f"file://{pub}/mlruns", "inside data.publisher_path"),
    "MLflow plain-path store": ("mlflow.tracking_uri", lambda pub, seed: f"{pub}/mlruns", "inside data.publisher_path"),
    "MLflow artifacts": ("mlflow.artifact_location", lambda pub, seed: f"{pub}/artifacts", "inside data.publisher_path"),
    "MLflow store on the seed file": ("mlflow.tracking_uri", lambda pub, seed: f"sqlite:///{seed}", "is data.seed_path"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_a_training_run_writing_into_its_inputs_is_refused_before_any_work(case, cfg_factory, inputs, tmp_path):
    key, value, where = TRAIN_CASES[case]
    publisher, seed = inputs
    before = snapshot(publisher), seed.read_bytes()
    out = tmp_path / "out"
    cfg = cfg_factory(f"data.publisher_path={publisher}", f"data.seed_path={seed}", f"{key}={value(publisher, seed)}", out=out)
    with pytest.raises(LookalikeError, match=f"config '{key}': .* {where} ") as err:
        run(cfg)
    assert "\n" not in str(err.value)
    assert (snapshot(publisher), seed.read_bytes()) == before
    untouched(out, cfg.ledger.path)


def test_an_export_whose_mlflow_store_is_in_the_inputs_is_refused(inputs, tmp_path):
    publisher, seed = inputs
    before = snapshot(publisher)
    overrides = [
        f"paths.output_dir={tmp_path / 'out'}",
        f"data.publisher_path={publisher}",
        f"data.seed_path={seed}",
        "export.model=0123456789abcdef",
        f"export.output_dir={tmp_path / 'segments'}",
        f"mlflow.tracking_uri=sqlite:///{publisher}/mlflow.db",
    ]
    with initialize_config_dir(config_dir=EXPORT_CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="export", overrides=overrides)
    with pytest.raises(LookalikeError, match="config 'mlflow.tracking_uri': .* inside data.publisher_path"):
        export(cfg)
    assert snapshot(publisher) == before and not (tmp_path / "segments").exists()


APPS = {"train": "lookalike.training.train", "export": "lookalike.export.app"}


@pytest.mark.parametrize(
    "app, folder",
    [("train", "hydra.run.dir"), ("train", "hydra.sweep.dir"), ("export", "hydra.run.dir")],
)
def test_a_run_folder_in_the_inputs_is_refused_before_hydra_writes_its_log(app, folder, inputs, tmp_path):
    """hydra.run.dir=<publisher folder> put train.log (and checkpoints) into the table."""
    publisher, seed = inputs
    out = tmp_path / "out"
    grant(out / "privacy_ledger.sqlite", publisher)  # a run the owners allow: only the folder is wrong
    before = snapshot(publisher)
    code = f"import sys; from {APPS[app]} import cli; sys.argv = ['lookalike-{app}', *sys.argv[1:]]; cli()"
    args = [f"paths.output_dir={out}", f"data.publisher_path={publisher}", f"data.seed_path={seed}", f"{folder}={publisher}"]
    args += ["debug=default"] if app == "train" else ["export.model=0123456789abcdef", f"export.output_dir={tmp_path / 'segments'}"]
    if folder == "hydra.sweep.dir":
        args = ["-m", *args, "privacy.target_epsilon=1"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [
        f"lookalike-{app}: error: config '{folder}': '{publisher}' is inside data.publisher_path '{publisher}': write outputs outside the input data"
    ]
    assert snapshot(publisher) == before
