"""All-or-nothing output: everything is written to a hidden sibling folder, then renamed into
place, so a failed export never leaves a half-written segment behind."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.errors import ConfigError


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse before any work: a non-empty folder without overwrite, or a place we cannot write."""
    if path.exists() and not path.is_dir():
        raise ConfigError("export.output_dir", f"'{path}' is a file; point it at a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError("export.output_dir", f"'{path}' is not empty; choose another folder or set export.overwrite=true")
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
        self.stage = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.stage.mkdir()

    def write_segment(self, audience: str, size: int, ids: pa.Array, scores: np.ndarray) -> Path:
        folder = self.stage / f"audience={audience}" / f"size={size}"
        folder.mkdir(parents=True)
        table = pa.table({"user_id": ids, "score": pa.array(scores, type=pa.float32()),
                          "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64))})
        pq.write_table(table, folder / "part-0.parquet")
        return folder

    def publish(self) -> None:
        old = None
        if self.destination.exists():
            old = self.destination.parent / f".{self.destination.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.destination, old)
        os.replace(self.stage, self.destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
