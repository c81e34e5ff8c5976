"""The publisher's users, streamed: their ids checked and hashed a record batch at a time.

The ledger needs every user's hash (fingerprint.py) and the checks need every id (non-null,
non-empty, unique strings), but nothing needs the ids all at once: each batch is checked and
hashed, and duplicates are found on the sorted hashes (8 bytes a user) instead of a hash table of
the ids. Equal hashes are only suspects (two ids may share a 64-bit hash, about once in 10^4 at
100M users): the suspects' ids are read again and compared exactly, so a table is never refused
for a collision.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from lookalike.data.features import is_text
from lookalike.data.matching import refuse_duplicates
from lookalike.errors import DataError
from lookalike.privacy.fingerprint import UsersAccumulator, UsersPart, user_hashes

BATCH_ROWS = 1 << 18


def check_id_batch(ids: pa.Array | pa.ChunkedArray, id_column: str, path: str) -> None:
    """One batch's share of :func:`~lookalike.data.matching.check_publisher_ids` (not duplicates)."""
    if not is_text(ids.type):
        raise DataError(f"publisher data '{path}': id column '{id_column}' has type {ids.type}: store ids as strings (or hash them with lookalike-hash)")
    empty = ids.null_count + pc.sum(pc.equal(ids, "")).as_py() if len(ids) else 0
    if empty:
        raise DataError(f"publisher data '{path}': id column '{id_column}' has empty ids: drop those rows")


def id_batches(source: ds.Dataset, id_column: str, row_filter: ds.Expression | None) -> Iterator[pa.Array]:
    for batch in source.to_batches(columns=[id_column], filter=row_filter, batch_size=BATCH_ROWS):
        if batch.num_rows:
            yield batch.column(0)


def scan_users(source: ds.Dataset, id_column: str, row_filter: ds.Expression | None, path: str) -> UsersPart:
    """The users of ``source`` in the window, checked (duplicates too) and hashed, streamed."""
    users = UsersAccumulator()
    for ids in id_batches(source, id_column, row_filter):
        check_id_batch(ids, id_column, path)
        users.add(ids)
    part = users.part()
    refuse_duplicate_users(part.hashes, reread_ids(source, id_column, row_filter), id_column, path)
    return part


def reread_ids(source: ds.Dataset, id_column: str, row_filter: ds.Expression | None) -> Callable[[np.ndarray], pa.Array]:
    """A function of suspect hashes: the ids of ``source`` that have one of them."""

    def reread(suspects: np.ndarray) -> pa.Array:
        found = []
        for ids in id_batches(source, id_column, row_filter):
            ids = pc.cast(ids, pa.large_string())
            found.append(ids.filter(pa.array(np.isin(user_hashes(ids), suspects))))
        return pa.concat_arrays(found) if found else pa.array([], pa.large_string())

    return reread


def refuse_duplicate_users(hashes: np.ndarray, reread: Callable[[np.ndarray], pa.Array], id_column: str, path: str) -> None:
    """Refuse an id that appears twice: ``hashes`` are every user's, sorted; ``reread`` gives the
    ids with given hashes."""
    suspects = duplicate_suspects(hashes)
    if suspects.size:
        refuse_duplicates(reread(suspects), id_column, path)


def duplicate_suspects(hashes: np.ndarray) -> np.ndarray:
    """The hashes that more than one user has (``hashes`` sorted): a repeated id, or a collision."""
    return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
