"""Join seed ids to publisher users and lay out the training and held-out sets.

The secret is seed membership, so the training set is built so that one user joining or
leaving the seed adds or removes exactly one training example (the add/remove relation that
DP-SGD's accounting is for), never flips a label:

- **positives**: every matched seed user not held out, one example per user whose target is the
  user's membership over all audiences (multi-label);
- **background**: the publisher users whose keyed-hash draw falls in
  ``[eval_negative_rate, eval_negative_rate + negative_rate)``, with target 0, *whether or not
  they are in the seed* (held-out seed users excepted, so that evaluation never scores users the
  model was trained on). A background user who joins the seed keeps that example and gains a
  positive one, or (if held out) loses it: one example either way.

The model thus learns seed against population (positive-unlabelled learning), whose score
ranks users by p(x | seed) / p(x), the odds of being in the seed. Every split is decided per
user by a keyed hash of the id, never by counting ("3 negatives per positive" would let one seed
user move several other users in or out of training).

A user already in one audience who joins another changes their positive example's target: a
replace-one change, covered at twice the epsilon (group privacy of add/remove).

With a ``population_rate`` (``privacy.mechanism`` label_rr or auto, privacy/label_rr.py) the
layout also holds the population randomised response trains on: every user whose draws fall
in ``[eval_negative_rate, eval_negative_rate + population_rate)`` and outside the hold-out range,
*whether in the seed or not*, each with their exact membership as target (randomised before
training). No row of it depends on who is in the seed; joining it changes one user's labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike.data.features import is_text
from lookalike.errors import DataError
from lookalike.privacy.id_hash import id_hashes


@dataclass
class TrainingSet:
    audiences: list[str]
    train_rows: np.ndarray  # rows of the publisher table used for training: background, then positives
    train_labels: np.ndarray  # float32 [len(train_rows), n_audiences]
    holdout_rows: dict[str, np.ndarray]  # audience -> held-out seed rows
    eval_negative_rows: np.ndarray  # non-seed users outside the training set
    reference_rows: np.ndarray  # users whose draw is in the evaluation range, seed or not: public
    matched: dict[str, int]  # exact match counts: shown only in trusted-evaluation mode
    # Randomised response's population (none unless asked for): rows and exact labels, secret.
    population_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    population_labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

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
    negative_rate: float,
    eval_negative_rate: float,
    split_seed: int,
    trusted: bool,
) -> TrainingSet:
    """Split publisher rows into seed positives (train / held out), negatives and eval negatives."""
    training = lay_out(
        publisher_ids,
        seeds,
        holdout_fraction=holdout_fraction,
        negative_rate=negative_rate,
        eval_negative_rate=eval_negative_rate,
        draws=split_draws(publisher_ids, split_seed),
    )
    check_matched(training.matched, training.n_train, min_matching_seed_size, trusted)
    return training


def lay_out(
    publisher_ids: pa.ChunkedArray,
    seeds: dict[str, np.ndarray],
    *,
    holdout_fraction: float,
    negative_rate: float,
    eval_negative_rate: float,
    draws: np.ndarray,
    population_rate: float = 0.0,
) -> TrainingSet:
    """The split of these rows (all of the table, or one torchrun rank's share), unchecked:
    the size checks need the counts of the whole table (check_matched)."""
    n = len(publisher_ids)
    audiences = list(seeds)
    member = np.zeros((n, len(audiences)), dtype=bool)
    for a, name in enumerate(audiences):
        member[:, a] = pc.is_in(publisher_ids, value_set=pa.array(seeds[name], type=pa.string())).to_numpy(zero_copy_only=False)
    matched = {name: int(member[:, a].sum()) for a, name in enumerate(audiences)}
    is_seed = member.any(axis=1)
    held = is_seed & (draws[:, 0] < holdout_fraction)
    positives = np.flatnonzero(is_seed & ~held)
    holdout_rows = {name: np.flatnonzero(held & member[:, a]) for a, name in enumerate(audiences)}
    other = draws[:, 1]
    in_eval_range = other < eval_negative_rate
    eval_negatives = np.flatnonzero(~is_seed & in_eval_range)
    background = np.flatnonzero(~held & in_background_range(draws, negative_rate, eval_negative_rate))
    train_rows = np.concatenate([background, positives])
    labels = np.concatenate([np.zeros((background.size, len(audiences)), dtype=np.float32), member[positives].astype(np.float32)])
    training = TrainingSet(audiences, train_rows, labels, holdout_rows, eval_negatives, np.flatnonzero(in_eval_range), matched)
    if population_rate > 0:
        # Every user in the hold-out range leaves it, seed or not: a label-independent set.
        population = np.flatnonzero((draws[:, 0] >= holdout_fraction) & in_background_range(draws, population_rate, eval_negative_rate))
        training.population_rows, training.population_labels = population, member[population].astype(np.float32)
    return training


def in_background_range(draws: np.ndarray, negative_rate: float, eval_negative_rate: float) -> np.ndarray:
    """Users whose negatives' draw puts them in the training background, seed or not: a function
    of the ids and the split seed only (the held-out seed users among them are left out)."""
    other = draws[:, 1]
    return (other >= eval_negative_rate) & (other < eval_negative_rate + negative_rate)


def check_matched(matched: dict[str, int], n_train: int, min_matching_seed_size: int, trusted: bool) -> None:
    """Refuse audiences below the minimum matched size, and an empty training set."""
    for name, count in matched.items():
        if count < min_matching_seed_size:
            # The exact count is seed-derived: only trusted-evaluation mode may show it.
            detail = f" ({count} matched)" if trusted else ""
            raise DataError(
                f"seed audience '{name}' matches fewer than {min_matching_seed_size} publisher users{detail} "
                "(rules.min_matching_seed_size): supply a larger seed or check that both sides use the same ids"
            )
    if not n_train:
        raise DataError("no training examples after matching: check data.holdout_fraction and data.negative_rate")


def check_released_matched(released: dict[str, int], min_matching_seed_size: int, epsilon: float) -> None:
    """Refuse audiences whose DP estimate of matched users (privacy/size_release.py) is below
    the minimum: the decision reads only the charged release, so a refusal tells the operator
    nothing the ledger did not charge for (an exact check would be a free membership oracle)."""
    for name, estimate in released.items():
        if estimate < min_matching_seed_size:
            raise DataError(
                f"seed audience '{name}' matches fewer than {min_matching_seed_size} publisher users by the run's DP count (about {estimate}; "
                f"rules.min_matching_seed_size, the count's epsilon {epsilon:.3g} charged): supply a larger seed or check that both sides use the same ids"
            )


def split_draws(ids: pa.Array | pa.ChunkedArray, split_seed: int) -> np.ndarray:
    """Two uniform numbers in [0, 1) per id from a hash keyed by the split seed (id_hash.py,
    vectorised; a BLAKE2b call per id until version 2 of the ledger key): column 0 decides the
    seed holdout, column 1 the negatives. The same user gets the same draws in every run and in
    export, whatever the row order of the files."""
    key = int.from_bytes(hashlib.blake2b(split_seed.to_bytes(8, "little", signed=True), digest_size=8, key=b"lookalike-split-v2").digest(), "little")
    return (id_hashes(ids, key, streams=2) >> np.uint64(11)) * 2.0**-53  # the top 53 bits: exact in a double, never 1.0


def check_publisher_ids(ids: pa.ChunkedArray, id_column: str, path: str) -> None:
    """Ids must be non-null, unique strings: one row per user is the privacy unit."""
    if not is_text(ids.type):
        raise DataError(f"publisher data '{path}': id column '{id_column}' has type {ids.type}: store ids as strings (or hash them with lookalike-hash)")
    empty = ids.null_count + pc.sum(pc.equal(ids, "")).as_py() if len(ids) else 0
    if empty:
        raise DataError(f"publisher data '{path}': id column '{id_column}' has {empty} empty ids: drop those rows")
    refuse_duplicates(ids, id_column, path)


def refuse_duplicates(ids: pa.Array | pa.ChunkedArray, id_column: str, path: str) -> None:
    if pc.count_distinct(ids).as_py() != len(ids):
        raise DataError(f"publisher data '{path}': id column '{id_column}' has duplicate user ids: keep one row per user (aggregate upstream)")
