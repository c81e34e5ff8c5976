"""Slow, multi-process checks: a SIGKILLed run stays charged and resumes its accounting; runs
log to a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lookalike.errors import ConfigError
from lookalike.privacy.accounting import epsilon_from_history
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.train import run
from tests.conftest import grant

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"


def _metrics(cfg) -> dict:
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    return logged.data.metrics | {"entry": int(logged.data.tags["ledger.entry_id"])}


@pytest.mark.slow
def test_killed_run_stays_charged_and_resume_continues_the_accountant(cfg_factory, demo_dir, tmp_path):
    epochs, out = 40, tmp_path / "out"
    ckpt = out / "crashed" / "checkpoints" / "last.pt"
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher", 1e5)
    # A size estimate this precise is the exact size: the straight run below samples at the same rate.
    exact = "privacy.size_epsilon=100"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            TRAIN,
            "debug=default",
            exact,
            f"trainer.epochs={epochs}",
            f"paths.output_dir={out}",
            f"hydra.run.dir={out / 'crashed'}",
            f"data.publisher_path={demo_dir / 'publisher'}",
            f"data.seed_path={demo_dir / 'seed.jsonl'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    saved = Checkpoint.load(ckpt)
    assert 1 <= saved.epoch < epochs
    (status,) = Ledger(out / "privacy_ledger.sqlite").status()
    assert status.reserved_epsilon == pytest.approx(3.0 + 100 + 0.2) and status.spent_epsilon == 0  # the crash stays charged

    # A resume that changes the plan its reservation covers is refused, charging nothing more.
    with pytest.raises(ConfigError, match="trainer.epochs"):
        run(cfg_factory(exact, f"trainer.epochs={epochs + 10}", f"trainer.resume_from={ckpt}", out=out))
    assert Ledger(out / "privacy_ledger.sqlite").status() == [status]
    resumed = cfg_factory(exact, f"trainer.epochs={epochs}", f"trainer.resume_from={ckpt}", out=out)
    run(resumed)
    m = _metrics(resumed)
    assert m["entry"] == saved.meta["ledger_entry_id"]  # no second reservation
    steps_per_epoch = saved.steps // saved.epoch
    assert m["privacy.steps"] == epochs * steps_per_epoch
    (status,) = Ledger(out / "privacy_ledger.sqlite").status()
    # A resumed run is charged its reservation in full (its steps before the resume are known
    # only from the checkpoint, a file the operator can edit): at least what it reports.
    assert status.reserved_epsilon == 0 and status.spent_epsilon == pytest.approx(3.0 + 100 + 0.2)
    assert status.spent_epsilon >= m["privacy.total_epsilon"] - 1e-9

    straight = cfg_factory(exact, f"trainer.epochs={epochs}", "owner.epsilon=1e5", out=tmp_path / "straight")
    run(straight)
    s = _metrics(straight)
    assert s["privacy.steps"] == m["privacy.steps"] and s["privacy.noise_multiplier"] == pytest.approx(m["privacy.noise_multiplier"])
    assert m["privacy.epsilon_spent"] == pytest.approx(s["privacy.epsilon_spent"], rel=1e-9)
    assert m["privacy.epsilon_spent"] == pytest.approx(
        epsilon_from_history([(m["privacy.noise_multiplier"], m["privacy.sample_rate"], int(m["privacy.steps"]))], m["privacy.delta"], "prv"), rel=1e-9
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not come up in 120 s")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


@pytest.mark.slow
def test_training_logs_to_a_real_mlflow_server(cfg_factory, mlflow_server, tmp_path, demo_dir):
    cfg = cfg_factory(f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment_name=remote", "mlflow.registered_model_name=lookalike-remote")
    run(cfg)
    client = MlflowClient(mlflow_server)
    (logged,) = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
    assert 0 < logged.data.metrics["privacy.epsilon_spent"] <= 3.0
    assert not (Path(cfg.paths.output_dir) / "mlflow.db").exists()  # nothing went to the local store
    assert (tmp_path / "server-artifacts").is_dir()
    version = client.get_latest_versions("lookalike-remote")[0] if hasattr(client, "get_latest_versions") else None
    mlflow.set_tracking_uri(mlflow_server)
    scorer = mlflow.pyfunc.load_model(f"models:/lookalike-remote/{version.version if version else 1}")
    import pyarrow.dataset as ds

    users = ds.dataset(demo_dir / "publisher", partitioning="hive").head(3).to_pandas()
    assert scorer.predict(users).shape == (3, 2)
    # Export straight from the registry on the server: models:/<name>/<version>, the export run
    # logged beside the training run on the server, the segments written locally.
    from hydra import compose, initialize_config_dir

    from lookalike.export.app import CONFIG_DIR as EXPORT_CONFIGS
    from lookalike.export.app import run as export

    target = tmp_path / "segments"
    with initialize_config_dir(config_dir=EXPORT_CONFIGS, version_base="1.3"):
        export_cfg = compose(
            config_name="export",
            overrides=[
                f"paths.output_dir={cfg.paths.output_dir}",
                f"data.publisher_path={demo_dir / 'publisher'}",
                f"data.seed_path={demo_dir / 'seed.jsonl'}",
                f"mlflow.tracking_uri={mlflow_server}",
                "mlflow.experiment_name=remote",
                f"export.model=models:/lookalike-remote/{version.version if version else 1}",
                f"export.output_dir={target}",
                "export.audience_size.bins=[10]",
            ],
        )
    report = export(export_cfg)
    assert report["model"]["uri"].startswith("models:/lookalike-remote/") and (target / "audience=luxury" / "size=10").is_dir()
    exports = client.search_runs([client.get_experiment_by_name("remote").experiment_id], "tags.`lookalike.kind` = 'export'")
    assert len(exports) == 1 and exports[0].data.tags["lookalike.training_run_id"] == logged.info.run_id
    assert not (Path(cfg.paths.output_dir) / "mlflow.db").exists()
