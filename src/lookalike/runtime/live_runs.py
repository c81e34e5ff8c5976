"""MLflow runs whose process is gone. A training or export that is killed (SIGKILL, the OOM
killer, a closed terminal) never ends its MLflow run, which then shows RUNNING forever. Each run
carries the host, pid and start time of the process that runs it; before a new run starts, the
runs of its experiment that a process of this host ran, and whose process is gone, are marked
KILLED (MLflow's own status), as an export removes the staging folders of exports that are gone
(export/output.py). Runs of other hosts are left alone: their processes cannot be seen from here.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
HOST_TAG, PID_TAG, START_TAG = "lookalike.host", "lookalike.pid", "lookalike.process_start"


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``<boot id>:<start time in clock ticks>`` (field 22 of
    /proc/<pid>/stat), so that a pid the system gave to a new process, before or after a reboot,
    is not taken for the old one. None where the process is gone or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces or ')'
    return f"{boot}:{fields[19]}"  # fields[0] is field 3 (the state)


def owner_tags() -> dict[str, str]:
    """The tags that name this process."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), START_TAG: process_start(os.getpid()) or ""}


def is_gone(pid: int, start: str) -> bool:
    """Whether the process ``pid`` of this host that started at ``start`` has ended."""
    if start and process_start(os.getpid()) is not None:
        return process_start(pid) != start
    try:  # no /proc here (or none where the run started): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def end_runs_of_gone_processes(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` whose process, on this host, is gone; the
    ids marked. Housekeeping: a tracking store that cannot search is logged, not raised."""
    client, marked = MlflowClient(), []
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    try:
        token = None
        while True:
            page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
            for run in page:
                tags = run.data.tags
                if not tags.get(PID_TAG, "").isdigit() or not is_gone(int(tags[PID_TAG]), tags.get(START_TAG, "")):
                    continue
                # Read again: the process may have ended its run (FINISHED) before it exited.
                if client.get_run(run.info.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
                    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
                    marked.append(run.info.run_id)
                    log.info("MLflow run %s marked KILLED: its process %s on this host is gone", run.info.run_id, tags[PID_TAG])
            token = page.token
            if not token:
                return marked
    except mlflow.exceptions.MlflowException as exc:
        log.warning("could not look for MLflow runs of ended processes: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return marked


@contextmanager
def start_run(run_id: str | None = None, experiment_id: str | None = None, **kwargs: Any):
    """``mlflow.start_run`` for a run of this process: first the runs of ended processes in its
    experiment are marked KILLED, then the run starts tagged with this process."""
    experiment = experiment_id if run_id is None else MlflowClient().get_run(run_id).info.experiment_id
    if experiment is not None:
        end_runs_of_gone_processes(experiment)
    tags = kwargs.pop("tags", None) or {}
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, tags=tags | owner_tags(), **kwargs) as active:
        yield active
