"""Content fingerprints of the data a run touches: the ledger's key.

The publisher fingerprint hashes file contents (not paths), so copying or moving the data does
not open a fresh budget. The seed fingerprint hashes the sorted unique ids of each audience, so
converting the seed from CSV to JSON lines does not either.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

CHUNK = 1 << 20


def publisher_fingerprint(files: list[str], root: str | Path) -> str:
    """SHA-256 over (relative path inside the dataset, content) of every Parquet file."""
    root = Path(root)
    digest = hashlib.sha256(b"lookalike-publisher-v1")
    for name in sorted(files, key=lambda f: _relative(f, root)):
        # Hive partition values live in the relative path, so it is part of the content.
        digest.update(_relative(name, root).encode() + b"\0")
        with open(name, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def seed_fingerprint(seeds: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(b"lookalike-seed-v1")
    for name in sorted(seeds):
        digest.update(name.encode() + b"\0")
        digest.update("\n".join(map(str, seeds[name])).encode() + b"\n\0")
    return digest.hexdigest()


def ledger_fingerprint(publisher: str, seed: str) -> str:
    return hashlib.sha256(f"{publisher}:{seed}".encode()).hexdigest()


def data_fingerprint(files: list[str], root: str | Path, seeds: dict[str, np.ndarray]) -> str:
    """The ledger key of (publisher files, seed ids): what training and export charge."""
    return ledger_fingerprint(publisher_fingerprint(files, root), seed_fingerprint(seeds))


def _relative(name: str, root: Path) -> str:
    path = Path(name)
    return path.name if root.is_file() or path == root else str(path.relative_to(root))
