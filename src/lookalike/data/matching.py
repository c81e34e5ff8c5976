"""Join seed ids to publisher users and lay out the training and held-out sets.

One publisher user is one example (the privacy unit): a multi-label target over audiences.
A fraction of each audience's matched users is held out (never trained on, never used as a
negative) for evaluation; negatives are non-seed users sampled at ``data.negative_ratio``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike.errors import DataError


@dataclass
class TrainingSet:
    audiences: list[str]
    train_rows: np.ndarray  # rows of the publisher table used for training
    train_labels: np.ndarray  # float32 [len(train_rows), n_audiences]
    holdout_rows: dict[str, np.ndarray]  # audience -> held-out seed rows
    eval_negative_rows: np.ndarray  # non-seed users outside the training set
    matched: dict[str, int]  # exact match counts: shown only in trusted-evaluation mode

    @property
    def n_train(self) -> int:
        return int(self.train_rows.size)

    @property
    def n_positive(self) -> int:
        return int((self.train_labels.max(axis=1) > 0).sum()) if self.n_train else 0


def match_seed(
    publisher_ids: pa.ChunkedArray,
    seeds: dict[str, np.ndarray],
    *,
    min_matching_seed_size: int,
    holdout_fraction: float,
    negative_ratio: float,
    max_eval_negatives: int,
    rng: np.random.Generator,
    split_seed: int,
    trusted: bool,
) -> TrainingSet:
    """Split publisher rows into seed positives (train / held out), negatives and eval negatives."""
    n = len(publisher_ids)
    audiences = list(seeds)
    member = np.zeros((n, len(audiences)), dtype=bool)
    for a, name in enumerate(audiences):
        member[:, a] = pc.is_in(publisher_ids, value_set=pa.array(seeds[name], type=pa.string())).to_numpy(zero_copy_only=False)
    matched = {name: int(member[:, a].sum()) for a, name in enumerate(audiences)}
    for name, count in matched.items():
        if count < min_matching_seed_size:
            # The exact count is seed-derived: only trusted-evaluation mode may show it.
            detail = f" ({count} matched)" if trusted else ""
            raise DataError(
                f"seed audience '{name}' matches fewer than {min_matching_seed_size} publisher users{detail} "
                "(rules.min_matching_seed_size): supply a larger seed or check that both sides use the same ids"
            )

    seed_rows = np.flatnonzero(member.any(axis=1))
    held = holdout_mask(publisher_ids.take(pa.array(seed_rows)), split_seed) < holdout_fraction
    train_pos, holdout = seed_rows[~held], seed_rows[held]
    holdout_rows = {name: holdout[member[holdout, a]] for a, name in enumerate(audiences)}

    non_seed = np.flatnonzero(~member.any(axis=1))
    rng.shuffle(non_seed)
    n_neg = min(int(round(negative_ratio * train_pos.size)), non_seed.size)
    negatives = non_seed[:n_neg]
    eval_negatives = np.sort(non_seed[n_neg : n_neg + max_eval_negatives])

    train_rows = np.concatenate([train_pos, negatives])
    order = np.argsort(train_rows, kind="stable")
    train_rows = train_rows[order]
    labels = member[train_rows].astype(np.float32)
    if not train_rows.size:
        raise DataError("no training examples after matching: check data.holdout_fraction and data.negative_ratio")
    return TrainingSet(audiences, train_rows, labels, holdout_rows, eval_negatives, matched)


def holdout_mask(ids: pa.Array | pa.ChunkedArray, split_seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id from a keyed hash: the same user lands on the same side
    of the holdout split in every run and in export, whatever the row order of the files."""
    key = split_seed.to_bytes(8, "little", signed=True)
    out = np.empty(len(ids), dtype=np.float64)
    for i, user in enumerate(ids.to_pylist()):
        digest = hashlib.blake2b(user.encode(), digest_size=8, key=key).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


def check_publisher_ids(ids: pa.ChunkedArray, id_column: str, path: str) -> None:
    """Ids must be non-null, unique strings: one row per user is the privacy unit."""
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise DataError(f"publisher data '{path}': id column '{id_column}' has type {ids.type}: store ids as strings (or hash them with lookalike-hash)")
    if ids.null_count:
        raise DataError(f"publisher data '{path}': id column '{id_column}' has {ids.null_count} empty ids: drop those rows")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise DataError(f"publisher data '{path}': id column '{id_column}' has duplicate user ids: keep one row per user (aggregate upstream)")
