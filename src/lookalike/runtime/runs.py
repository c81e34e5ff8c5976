"""The runtime both applications share: the device a command runs on and the Hydra run folder.

Training and export both use these; neither imports the other's glue for them.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lookalike.errors import ConfigError


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


def discard_run_directory() -> None:
    """Remove Hydra's job folder if it holds nothing but Hydra's own config and log."""
    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
