"""All-or-nothing output: everything is written to a hidden sibling folder, then renamed into
place, so a failed export never leaves a half-written segment behind.

Every export holds a marker whose manifest lists what it wrote; ``export.overwrite=true``
replaces a folder only when everything in it is on that list, so files that others put there
later (a training run's ledger and MLflow store, say) are never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.data.seed import check_audience_name
from lookalike.errors import ConfigError

MARKER = ".lookalike-export"  # in every export: its manifest lists what the export wrote
KEY = "export.output_dir"
ONLY_AN_EXPORT = "export.overwrite=true only replaces a previous export: choose an empty folder"
log = logging.getLogger("lookalike.export")


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
            raise ConfigError(KEY, f"'{path}' is not empty; choose another folder or set export.overwrite=true")
        problem = foreign_entry(target)  # a linked folder: what it points at
        if problem is not None:
            raise ConfigError(KEY, f"'{path}' {problem}; {ONLY_AN_EXPORT}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (path.is_dir() and not os.access(path, os.W_OK)):
        raise ConfigError("export.output_dir", f"'{path}' is not writable; choose a folder you can write to")


def foreign_entry(folder: Path) -> str | None:
    """None when ``folder`` is empty or holds only what its marker's manifest lists (each listed
    folder a real folder, each listed file a regular file, never a link); else what is wrong,
    naming the first entry that no export wrote."""
    if not folder.is_dir() or folder.is_symlink():
        return "is not a folder"
    if not any(folder.iterdir()):
        return None
    try:
        manifest = json.loads((folder / MARKER).read_text())
        files, folders = set(manifest["files"]) | {MARKER}, set(manifest["folders"])
    except (OSError, UnicodeDecodeError):
        return f"holds files no export wrote ('{min(p.name for p in folder.iterdir())}')"
    except (ValueError, KeyError, TypeError):
        return f"holds a '{MARKER}' without a manifest (an older lookalike-export, or edited): remove that folder yourself"
    for root, dirs, names in os.walk(folder):  # does not follow links: a linked folder is foreign
        dirs.sort()
        here = Path(root).relative_to(folder)
        for name in sorted(dirs):
            entry = (here / name).as_posix()
            if entry not in folders or os.path.islink(os.path.join(root, name)):
                return f"holds files no export wrote ('{entry}')"
        for name in sorted(names):
            entry = (here / name).as_posix()
            if entry not in files or not stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode):
                return f"holds files no export wrote ('{entry}')"
    return None


class StagedOutput:
    """A temporary folder next to the destination; ``publish`` swaps it in atomically."""

    def __init__(self, destination: Path, overwrite: bool = False):
        # A linked output folder is published into the folder it points at: the link stays,
        # and the stage is a sibling of the real folder (a rename never crosses file systems).
        self.destination, self.overwrite = destination.resolve(), overwrite
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()
        self.stage = self.destination.parent / f".{self.destination.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.stage.mkdir()
        try:
            (self.stage / MARKER).write_text(_owner())
        except BaseException:
            self.discard()  # a stage without its marker (a full disk) would never be cleaned up
            raise

    def write_segment(self, audience: str, size: int, ids: pa.Array, scores: np.ndarray) -> Path:
        folder = self.stage / f"audience={check_audience_name(audience, 'export')}" / f"size={size}"
        folder.mkdir(parents=True)
        table = pa.table({"user_id": ids, "score": pa.array(scores, type=pa.float32()), "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64))})
        pq.write_table(table, folder / "part-0.parquet")
        return folder

    def publish(self) -> None:
        """Rename the stage into place. Renaming a folder onto a path succeeds only where the
        path is missing or an empty folder, and fails otherwise (ENOTEMPTY, EEXIST, ENOTDIR),
        in one atomic step: of several exports into one new folder exactly one gets in, and a
        folder that filled up after the check is never replaced. (An empty folder is what the
        check allowed, so replacing one is no loss; no RENAME_NOREPLACE is needed.) With
        overwrite, the previous export is first renamed aside, so nothing can be added to it
        through its path, then checked against its manifest, and only its listed files go."""
        _write_manifest(self.stage)
        old = self._set_aside() if self.overwrite else None
        try:
            os.rename(self.stage, self.destination)
        except OSError as exc:
            kept = "" if old is None or _put_back(old, self.destination) else f"; the previous export is kept at '{old}'"
            raise ConfigError(
                KEY,
                f"'{self.destination}' was filled by another process during this export ({exc.strerror}); nothing was published{kept}: choose another folder",
            ) from None
        if old is not None:
            _remove_listed(old)

    def _set_aside(self) -> Path | None:
        old = self.destination.parent / f".{self.destination.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.destination, old)
        except FileNotFoundError:
            return None  # gone since the check: publish as into a new folder
        problem = foreign_entry(old)
        if problem is not None:
            kept = "" if _put_back(old, self.destination) else f" (now at '{old}')"
            raise ConfigError(KEY, f"'{self.destination}'{kept} {problem}, added while this export ran; nothing was published; {ONLY_AN_EXPORT}")
        return old

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Staging folders of killed exports into the same destination, from this machine and a
        process that is gone (a running export's stage is left alone)."""
        for stage in self.destination.parent.glob(f".{self.destination.name}.tmp-*"):
            try:
                pid, _, host = (stage / MARKER).read_text(encoding="utf-8").partition("@")
            except (OSError, UnicodeDecodeError):  # no marker, a garbage one, or another export published or discarded it meanwhile
                continue
            # A stage about to be published holds its manifest instead: its export is running.
            # A marker that is not ASCII digits (int() refuses "²", which isdigit() accepts), a
            # manifest or another host's is not ours to judge: left alone.
            if pid.isascii() and pid.isdigit() and host == socket.gethostname() and not _alive(int(pid)):
                shutil.rmtree(stage, ignore_errors=True)


def _write_manifest(stage: Path) -> None:
    files, folders = [], []
    for root, dirs, names in os.walk(stage):
        here = Path(root).relative_to(stage)
        folders += [(here / d).as_posix() for d in dirs]
        files += [(here / n).as_posix() for n in names if (here / n).as_posix() != MARKER]
    manifest = {"written_by": "lookalike-export", "files": sorted(files), "folders": sorted(folders)}
    (stage / MARKER).write_text(json.dumps(manifest, indent=1) + "\n")  # who staged it is no longer needed


def _put_back(old: Path, destination: Path) -> bool:
    try:
        os.rename(old, destination)  # replaces at most an empty folder that appeared meanwhile
        return True
    except OSError:
        return False


def _remove_listed(old: Path) -> None:
    """Remove a previous export that was set aside: only the entries its manifest lists, files
    first, then folders deepest first; anything else keeps its folder (and is reported)."""
    try:
        # No marker: the folder was empty when it was set aside (foreign_entry checked it).
        manifest = json.loads((old / MARKER).read_text()) if (old / MARKER).is_file() else {"files": [], "folders": []}
        for entry in [*manifest["files"], MARKER]:
            (old / entry).unlink(missing_ok=True)
        for entry in sorted(manifest["folders"], key=lambda e: e.count("/"), reverse=True):
            (old / entry).rmdir()
        old.rmdir()
    except (OSError, ValueError) as exc:
        log.warning("the previous export set aside at '%s' could not be removed (%s); remove it yourself", old, exc)


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process id can be
        return False
    except PermissionError:
        return True
    return True
