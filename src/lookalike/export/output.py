"""All-or-nothing output: everything is written to a hidden sibling folder, then renamed into
place, so a failed export never leaves a half-written segment behind."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.data.seed import check_audience_name
from lookalike.errors import ConfigError

MARKER = ".lookalike-export"  # written into every export: overwrite replaces only folders holding it


def check_output_dir(path: Path, overwrite: bool, protected: dict[str, str] | None = None) -> None:
    """Refuse before any work: a non-empty folder without overwrite, a folder no export wrote
    (overwrite replaces only a previous export), a folder that holds or lies above an input, the
    ledger, the MLflow store or the run folders (``protected``: setting -> path), or a place we
    cannot write."""
    if path.exists() and not path.is_dir():
        raise ConfigError("export.output_dir", f"'{path}' is a file; point it at a folder")
    target = path.resolve()
    for key, value in (protected or {}).items():
        kept = Path(value).resolve()
        if kept == target or target in kept.parents:
            raise ConfigError(
                "export.output_dir", f"'{path}' holds {key} '{value}': an export replaces its folder whole; write exports to a folder of their own"
            )
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError("export.output_dir", f"'{path}' is not empty; choose another folder or set export.overwrite=true")
        if not (path / MARKER).is_file():
            raise ConfigError(
                "export.output_dir", f"'{path}' holds files no export wrote; export.overwrite=true only replaces a previous export: choose an empty folder"
            )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (path.is_dir() and not os.access(path, os.W_OK)):
        raise ConfigError("export.output_dir", f"'{path}' is not writable; choose a folder you can write to")


class StagedOutput:
    """A temporary folder next to the destination; ``publish`` swaps it in atomically."""

    def __init__(self, destination: Path):
        self.destination = destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()
        self.stage = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.stage.mkdir()
        (self.stage / MARKER).write_text(_owner())

    def write_segment(self, audience: str, size: int, ids: pa.Array, scores: np.ndarray) -> Path:
        folder = self.stage / f"audience={check_audience_name(audience, 'export')}" / f"size={size}"
        folder.mkdir(parents=True)
        table = pa.table({"user_id": ids, "score": pa.array(scores, type=pa.float32()), "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64))})
        pq.write_table(table, folder / "part-0.parquet")
        return folder

    def publish(self) -> None:
        (self.stage / MARKER).write_text("written by lookalike-export\n")  # who staged it stays here
        old = None
        if self.destination.exists():
            old = self.destination.parent / f".{self.destination.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.destination, old)
        os.replace(self.stage, self.destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Staging folders of killed exports into the same destination, from this machine and a
        process that is gone (a running export's stage is left alone)."""
        for stage in self.destination.parent.glob(f".{self.destination.name}.tmp-*"):
            owner = (stage / MARKER).read_text().split("@", 1) if (stage / MARKER).is_file() else None
            if owner and owner[1] == socket.gethostname() and not _alive(int(owner[0])):
                shutil.rmtree(stage, ignore_errors=True)


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
