"""A killed run's MLflow run does not stay RUNNING: the next run on the same experiment marks the
runs whose process is gone KILLED (issue 22 item 12). Real processes, a real MLflow store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lookalike.runtime.live_runs import HOST_TAG, PID_TAG, START_TAG, end_runs_of_gone_processes, owner_tags, process_start
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run
from tests.conftest import grant

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"


def _ended_process_tags() -> dict[str, str]:
    """The tags a process had that has ended since (a real child, started and waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = process_start(child.pid)
    child.communicate(timeout=60)
    assert start is not None
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(child.pid), START_TAG: start}


def test_runs_of_ended_processes_on_this_host_are_marked_killed_and_no_other(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    ended, mine = _ended_process_tags(), owner_tags()
    runs = {
        "ended": ended,
        "alive": mine,
        "pid reused": mine | {START_TAG: "another-boot:1"},  # this pid, but not the process that ran it
        "other host": ended | {HOST_TAG: "elsewhere.example"},  # its processes cannot be seen from here
        "untagged": {},
        "finished": ended,
    }
    ids = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in runs.items()}
    client.set_terminated(ids["finished"], "FINISHED")
    mlflow.set_tracking_uri(client.tracking_uri)  # the store a command's MlflowClient() finds
    marked = end_runs_of_gone_processes(experiment)
    assert sorted(marked) == sorted([ids["ended"], ids["pid reused"]])
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"ended": "KILLED", "alive": "RUNNING", "pid reused": "KILLED", "other host": "RUNNING", "untagged": "RUNNING", "finished": "FINISHED"}
    assert client.get_run(ids["ended"]).info.end_time is not None


@pytest.mark.slow
def test_a_sigkilled_training_run_is_marked_killed_by_the_next_run(cfg_factory, demo_dir, tmp_path):
    out = tmp_path / "out"
    ckpt = out / "killed" / "checkpoints" / "last.pt"
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher", 1e5)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            TRAIN,
            "debug=default",
            "trainer.epochs=40",
            f"paths.output_dir={out}",
            f"hydra.run.dir={out / 'killed'}",
            f"data.publisher_path={demo_dir / 'publisher'}",
            f"data.seed_path={demo_dir / 'seed.jsonl'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Its first checkpoint is written after its MLflow run started (a file, not a pause).
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    client = MlflowClient(resolve_tracking_uri(f"sqlite:///{out / 'mlflow.db'}"))
    experiment = client.get_experiment_by_name("lookalike").experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "RUNNING" and killed.data.tags[PID_TAG] == str(proc.pid)  # what MLflow showed forever

    run(cfg_factory("trainer.epochs=1", out=out))  # the next run on the same store
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    assert runs.pop(killed.info.run_id).info.status == "KILLED"
    (second,) = runs.values()
    assert second.info.status == "FINISHED" and second.data.tags[PID_TAG] == str(os.getpid())
