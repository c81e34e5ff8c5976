"""The runtime both applications share: the device a command runs on and the Hydra run folder.

Training and export both use these; neither imports the other's glue for them.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from lookalike.errors import ConfigError
from lookalike.runtime.config import check_outputs_outside_inputs, input_paths
from lookalike.settings import path_value


def pick_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU (``key``: the setting, for the error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(key, f"'{name}' is not one of auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(key, f"'{name}' asked for but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def run_directory(cfg: Any) -> Path:
    """Hydra's output folder for this job, or a fresh one under ``paths.output_dir/runs``."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    path = Path(str(cfg.paths.output_dir)) / "runs" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_run_folder(cfg: Any) -> None:
    """The Hydra job's folder outside the inputs (it gets the job log, checkpoints and the
    bundle); RunFolderRecord refuses it before Hydra creates it, this covers an application
    run without that callback."""
    if HydraConfig.initialized():
        key = "hydra.sweep.dir" if is_multirun() else "hydra.run.dir"
        check_outputs_outside_inputs({key: HydraConfig.get().runtime.output_dir}, _inputs(cfg))


def _inputs(config: Any) -> dict[str, Any]:
    seed = OmegaConf.select(config, "data.seed_path", default=None)
    seed = OmegaConf.to_container(seed, resolve=True) if isinstance(seed, (DictConfig, ListConfig)) else seed
    return input_paths(OmegaConf.select(config, "data.publisher_path", default=None), seed)


def _refuse_inside_inputs(config: DictConfig, key: str, folder: Path) -> None:
    """Before Hydra creates the run folder and opens its log there: a folder inside the input
    data would get train.log beside the table, which every later run then reports corrupt.
    Refused in one line, exit 2, like every refusal of the application (nothing is written yet)."""
    try:
        check_outputs_outside_inputs({key: folder}, _inputs(config))
    except ConfigError as exc:
        app = OmegaConf.select(config, "hydra.help.app_name", default="lookalike")
        print(f"{app}: error: {exc}", file=sys.stderr)
        sys.exit(2)


class RunFolderRecord(Callback):
    """Notes what is at the run folder before Hydra creates it (``on_run_start`` and
    ``on_multirun_start`` come before Hydra's mkdir; ``on_job_start`` comes after), so that a
    refused run removes only what it created itself: ``hydra.run.dir`` may name a folder that
    holds the operator's own files."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The same config object run_job resolves next; ${now:} and ${run_id:} are cached, so
        # this is the folder Hydra is about to create.
        folder = Path(os.path.abspath(str(config.hydra.run.dir)))
        _refuse_long_paths(config, "hydra.run.dir")
        _refuse_inside_inputs(config, "hydra.run.dir", folder)
        _record(folder, job=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(os.path.abspath(str(config.hydra.sweep.dir)))
        _refuse_long_paths(config, "hydra.sweep.dir")
        _refuse_inside_inputs(config, "hydra.sweep.dir", folder)
        _record(folder, job=True)


def _refuse_long_paths(config: DictConfig, folder_key: str) -> None:
    """Hydra makes the run folder before the command checks its config: a name no file system
    takes (ENAMETOOLONG) is refused here, in the command's one line, not as Hydra's traceback."""
    try:
        path_value("paths.output_dir", OmegaConf.select(config, "paths.output_dir", default="") or "")
        path_value(folder_key, os.path.abspath(str(OmegaConf.select(config, folder_key))))
    except ConfigError as exc:
        print(f"lookalike-{config.hydra.job.config_name}: error: {exc}", file=sys.stderr)
        sys.exit(2)


_before: dict[str, Any] = {}  # what RunFolderRecord saw; one Hydra application per process


def _record(folder: Path, job: bool) -> None:
    """``folder`` is the run folder, or for a sweep the folder its job folders go into;
    ``created``: it and the parents above it that do not exist yet, deepest first."""
    created = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else None
    _before.clear()
    _before.update(folder=folder, job=job, entries=entries, created=created)


def _hydra_files(folder: Path) -> set[str]:
    """The names Hydra writes into a run folder: its job log and, if set, its config copy."""
    hydra = HydraConfig.get()
    names = {str(hydra.output_subdir)} if hydra.output_subdir else set()
    log_file = OmegaConf.select(cast(DictConfig, hydra.job_logging), "handlers.file.filename", default=None)  # a dict to mypy, a DictConfig at run time
    if log_file is not None and Path(os.path.abspath(str(log_file))).parent == folder:
        names.add(Path(str(log_file)).name)
    return names


def discard_run_directory() -> None:
    """After a refusal: remove what Hydra wrote for this run, and the folders the run created,
    if they hold nothing else. Files that were there before the run are never touched; with
    no record of what was there (no RunFolderRecord), nothing is removed."""
    if not HydraConfig.initialized() or not _before:
        return
    folder = Path(os.path.abspath(HydraConfig.get().runtime.output_dir))
    ours = _hydra_files(folder)
    if _before["job"]:  # a sweep's job folder: created by this run unless it was in the sweep folder
        if folder.parent != _before["folder"] or (_before["entries"] is not None and folder.name in _before["entries"]):
            return
        created, existed = [folder], None
    elif folder == _before["folder"]:
        created, existed = _before["created"], _before["entries"]
    else:
        return
    if existed is not None:  # an existing folder: only Hydra's files that the run added
        for name in sorted(ours - existed):
            _remove(folder / name)
        return
    if not folder.is_dir() or any(p.name not in ours for p in folder.iterdir()):
        return  # the run wrote more (checkpoints of a charged run): kept
    for name in ours:
        _remove(folder / name)
    for made in created:  # the run folder, then the parents it created (``runs/``), while empty
        try:
            made.rmdir()
        except OSError:
            break


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
