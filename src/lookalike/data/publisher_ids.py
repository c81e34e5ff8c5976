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


class IdChecks:
    """:func:`~lookalike.data.matching.check_publisher_ids` a batch at a time (duplicates apart):
    a wrong type is refused at once, empty ids are counted over every batch and refused, with
    their number, by :meth:`finish`, before anything computed from the batches is used."""

    def __init__(self, id_column: str, path: str):
        self.id_column, self.path, self.empty = id_column, path, 0

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        if not is_text(ids.type):
            raise DataError(
                f"publisher data '{self.path}': id column '{self.id_column}' has type {ids.type}: store ids as strings (or hash them with lookalike-hash)"
            )
        self.empty += ids.null_count + pc.sum(pc.equal(ids, "")).as_py() if len(ids) else 0

    def finish(self) -> None:
        if self.empty:
            raise DataError(f"publisher data '{self.path}': id column '{self.id_column}' has {self.empty} empty ids: drop those rows")


def id_batches(source: ds.Dataset, id_column: str, row_filter: ds.Expression | None) -> Iterator[pa.Array]:
    for batch in source.to_batches(columns=[id_column], filter=row_filter, batch_size=BATCH_ROWS):
        if batch.num_rows:
            yield batch.column(0)


def scan_users(source: ds.Dataset, id_column: str, row_filter: ds.Expression | None, path: str) -> UsersPart:
    """The users of ``source`` in the window, checked (duplicates too) and hashed, streamed."""
    users, checks = UsersAccumulator(), IdChecks(id_column, path)
    for ids in id_batches(source, id_column, row_filter):
        checks.add(ids)
        users.add(ids)
    checks.finish()
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
