"""Re-key a ledger's datasets from version 1 of the user hash to this version's (fingerprint.py).

A dataset stores hashes, not ids, so it can only be re-keyed from a table holding its users: the
owners give the table each dataset was created or attached from (or any table holding all its
stored users), its ids are hashed both ways, and every stored version-1 hash is replaced by the
same user's new one. A dataset some of whose stored users the table lacks is left as it is
(re-keyed in part, the others would silently leave its budget). Until every dataset is re-keyed
the ledger refuses runs and budget changes (budget_match.datasets_in): no user is ever matched
on one version while charged on another.

A dataset stored before hashes were (a sketch only) is re-keyed from exactly its own table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import update

from lookalike.errors import LookalikeError
from lookalike.privacy.budget_match import stored_datasets
from lookalike.privacy.fingerprint import KEY_VERSION, SKETCH_SIZE, UsersKey, merge_parts, part_of
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import DATASETS


@dataclass(frozen=True)
class TableHashes:
    """One table's users under both versions of the hash, aligned (``v1[i]`` and ``v2[i]`` are
    the same user's)."""

    v1: np.ndarray
    v2: np.ndarray

    def keys(self) -> tuple[UsersKey, UsersKey]:
        return merge_parts([part_of(self.v1)], version=1), merge_parts([part_of(self.v2)])


def rekey(ledger: Ledger, table: TableHashes) -> tuple[int, int]:
    """Re-key every old dataset whose stored users ``table`` holds: (re-keyed, still old)."""
    if not ledger.exists():
        raise LookalikeError(f"ledger '{ledger.path}' does not exist")
    ledger._ready(create=False)
    old_key, new_key = table.keys()
    order = np.argsort(table.v1, kind="stable")
    v1, v2 = table.v1[order], table.v2[order]
    done = left = 0
    with ledger.transaction() as conn:
        for datasets in stored_datasets(conn).values():
            for dataset in datasets:
                if dataset.version == KEY_VERSION:
                    continue
                new = _rekeyed(dataset, old_key, new_key, v1, v2)
                if new is None:
                    left += 1
                    continue
                stored = None if new.hashes is None else new.hashes_bytes()
                conn.execute(update(DATASETS).where(DATASETS.c.digest == dataset.digest).values(digest=new.digest, sketch=new.to_json(), hashes=stored))
                done += 1
    return done, left


def _rekeyed(dataset: UsersKey, old_key: UsersKey, new_key: UsersKey, v1: np.ndarray, v2: np.ndarray) -> UsersKey | None:
    """The dataset under the new hash, or None where ``v1``'s users do not hold it."""
    same_table = dataset.digest == old_key.digest
    if dataset.hashes is None:
        # A sketch-only dataset: its users are known only by their digest.
        return replace(new_key, hashes=None, users=dataset.users) if same_table else None
    if dataset.hashes.size and not v1.size:
        return None
    at = np.minimum(np.searchsorted(v1, dataset.hashes), max(v1.size - 1, 0))
    if dataset.hashes.size and not np.array_equal(v1[at], dataset.hashes):
        return None
    hashes = np.sort(v2[at]) if dataset.hashes.size else np.zeros(0, np.uint64)
    if same_table:
        # Its stored hashes are the table's less other budgets' users: the digest and sketch stay the table's.
        return replace(new_key, hashes=hashes)
    # A table that holds more: the dataset keeps its own name (derived, so that it cannot clash).
    digest = hashlib.sha256(f"lookalike-users-rekeyed:{dataset.digest}".encode()).hexdigest()
    return UsersKey(digest, dataset.users, hashes[:SKETCH_SIZE].copy(), hashes)
