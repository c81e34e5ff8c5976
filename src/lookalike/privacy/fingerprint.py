"""The ledger's key: which publisher users a run touches, not how their table is stored.

What DP protects is each publisher user (one user, one example) and their seed membership, so a
budget belongs to a set of users. The key is computed from the user ids alone: file bytes, names,
compression, partitioning and row order do not change it, and neither does the seed (every seed
matched against these users draws on their budget, so adding, dropping or reordering seed ids,
matched or not, never opens a fresh budget).

A new snapshot of the table is not the same set of ids, but it is mostly the same people: it
must draw on the same budget. Each key therefore carries a bottom-k sketch (the ``SKETCH_SIZE``
smallest 64-bit hashes of the ids), from which the share of one set's users that are also in
another is estimated (Broder's bottom-k / KMV estimator). A run whose users lie mostly
(``SHARED_USERS``) in a dataset the ledger knows is charged to that dataset's budget.

Which budgets a run touches is decided exactly, not from the sketch: a sketch is a sample the
operator can game (a table of another budget's 2,048 sketched users plus most of one's own was
matched to that other budget "about 100%"). Each key also carries the sorted hashes of all its
users, and each dataset of the ledger stores them (8 bytes a user), so that a run is charged on
every budget it shares even one user with (budgets.py). The sketch still serves older ledgers'
datasets, stored before hashes were.

The hashes are of publisher ids only, never of seed ids: the ledger may be read by the
operator, who must not learn from it who is in the seed.

Version 2 of the key hashes ids vectorised (id_hash.py), streamed a row group at a time
(:class:`UsersAccumulator`); version 1 was a keyed BLAKE2b per id, which at 10M users was most
of an export's time and memory. The two give other hashes and digests for the same users, so a
key records its version (in its stored sketch) and a ledger that still holds version-1 datasets
is refused until the owners re-key them (rekey.py): matched on the new hashes they would look
like strangers, and a stranger gets a fresh budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from lookalike.privacy.id_hash import id_hashes

SKETCH_SIZE = 2048
SHARED_USERS = 0.5  # a run whose users lie at least this much in a known dataset is charged there
KEY_VERSION = 2
_KEY_V2 = int.from_bytes(hashlib.blake2b(b"lookalike-users-v2", digest_size=8).digest(), "little")
_KEY_V1 = b"lookalike-users-v1"
_MASK = (1 << 64) - 1


def user_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The version-2 64-bit hash of every id (uint64), the same on every machine."""
    return id_hashes(ids, _KEY_V2)


def v1_user_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The version-1 hash (keyed BLAKE2b, one Python call per id): only to re-key old ledgers."""
    raw = b"".join(hashlib.blake2b(u.encode(), digest_size=8, key=_KEY_V1).digest() for u in ids.to_pylist())
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class UsersPart:
    """What one process knows of its share of the users; parts merge into a :class:`UsersKey`."""

    users: int
    total: int  # sum of the hashes mod 2^64
    xor: int
    smallest: np.ndarray  # up to SKETCH_SIZE smallest hashes, sorted
    hashes: np.ndarray  # every user's hash, sorted


def part_of(hashes: np.ndarray) -> UsersPart:
    """The part of the users with these (unsorted) hashes."""
    hashes = np.sort(hashes)
    total = int(hashes.sum(dtype=np.uint64)) if hashes.size else 0  # wraps mod 2^64, as wanted
    xor = int(np.bitwise_xor.reduce(hashes)) if hashes.size else 0
    return UsersPart(int(hashes.size), total, xor, hashes[:SKETCH_SIZE].copy(), hashes)


def users_part(ids: pa.Array | pa.ChunkedArray) -> UsersPart:
    return part_of(user_hashes(ids))


class UsersAccumulator:
    """A process's users, added a record batch at a time: what it holds is their hashes (8 bytes
    a user, which the ledger needs for exact membership), never the ids."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Add these users; returns their hashes (in the order of ``ids``)."""
        hashes = user_hashes(ids)
        self._hashes.append(hashes)
        return hashes

    def part(self) -> UsersPart:
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)
        self._hashes = []  # the sorted copy replaces them
        return part_of(hashes)


@dataclass(frozen=True)
class UsersKey:
    digest: str  # the exact set of users (order-free)
    users: int
    sketch: np.ndarray  # the SKETCH_SIZE smallest hashes, sorted
    hashes: np.ndarray | None = None  # every user's hash, sorted; None for a dataset stored before hashes were
    version: int = KEY_VERSION  # which hash (fingerprint.py's docstring); a dataset stored before versions were is 1

    def shared_with(self, hashes: np.ndarray) -> np.ndarray:
        """This key's hashes that are also in the sorted array ``hashes`` (exact)."""
        mine = self.hashes if self.hashes is not None else np.zeros(0, np.uint64)
        if hashes.size == 0 or mine.size == 0:
            return np.zeros(0, np.uint64)
        at = np.minimum(np.searchsorted(hashes, mine), hashes.size - 1)
        return mine[hashes[at] == mine]

    def without(self, leave_out: list[np.ndarray]) -> "UsersKey":
        """This key with only the hashes of users no array in ``leave_out`` holds: what the ledger
        stores for a snapshot, so that another budget's users are not matched here too."""
        mine = self.hashes if self.hashes is not None else np.zeros(0, np.uint64)
        for other in leave_out:
            if other.size and mine.size:
                at = np.minimum(np.searchsorted(other, mine), other.size - 1)
                mine = mine[other[at] != mine]
        return replace(self, hashes=mine)

    def hashes_bytes(self) -> bytes:
        """The stored form of :attr:`hashes` (sorted, 8 bytes each; :func:`stored_hashes` reads it)."""
        return (self.hashes if self.hashes is not None else np.zeros(0, np.uint64)).astype("<u8").tobytes()

    def share_in(self, other: "UsersKey") -> float:
        """Estimated share of this key's users that are also ``other``'s users.

        Among the hashes of this set below ``other``'s largest sketched hash, those in ``other``'s
        sketch are exactly those in ``other`` (a bottom-k sketch holds every hash below its
        maximum): a uniform sample of this set, tested exactly. Exact while a set has at most
        SKETCH_SIZE users."""
        if other.users == 0 or self.users == 0:
            return 0.0
        limit = other.sketch[-1] if other.users > SKETCH_SIZE else np.uint64(_MASK)
        mine = self.sketch[self.sketch <= limit]
        if mine.size == 0:
            return 0.0
        return float(np.isin(mine, other.sketch, assume_unique=True).mean())

    def to_json(self) -> str:
        return json.dumps({"users": self.users, "sketch": [int(h) for h in self.sketch], "version": self.version})

    @classmethod
    def from_json(cls, digest: str, text: str) -> "UsersKey":
        raw = json.loads(text)
        return cls(digest, int(raw["users"]), np.array(raw["sketch"], dtype=np.uint64), version=int(raw.get("version", 1)))


def merge_parts(parts: list[UsersPart], version: int = KEY_VERSION) -> UsersKey:
    """The key of the union of disjoint parts (the torchrun ranks' shares, or one process), of
    hashes of ``version``."""
    users = sum(p.users for p in parts)
    total = sum(p.total for p in parts) & _MASK
    xor = 0
    for p in parts:
        xor ^= p.xor
    smallest = np.sort(np.concatenate([p.smallest for p in parts]))[:SKETCH_SIZE] if parts else np.zeros(0, np.uint64)
    if len(parts) == 1:
        hashes = parts[0].hashes  # sorted already
    else:
        hashes = np.sort(np.concatenate([p.hashes for p in parts])) if parts else np.zeros(0, np.uint64)
    digest = hashlib.sha256(f"lookalike-users-v{version}:{users}:{total}:{xor}".encode()).hexdigest()
    return UsersKey(digest, users, smallest.astype(np.uint64), hashes.astype(np.uint64), version)


def stored_hashes(blob: bytes | None) -> np.ndarray | None:
    """A dataset's hashes as the ledger stores them (None: stored before hashes were)."""
    return None if blob is None else np.frombuffer(blob, dtype="<u8").astype(np.uint64)


def users_key(ids: pa.Array | pa.ChunkedArray) -> UsersKey:
    return merge_parts([users_part(ids)])
