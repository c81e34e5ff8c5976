"""One streamed pass over the publisher's rows: what training keeps of a table it cannot hold.

Training needs every publisher user for three things that add up over row groups: the feature
statistics (feature_stats.py merges them), the ledger's key (every user's 8-byte hash) and the
public counts of the split. It needs the rows themselves only for the users who can enter
training, holdout or evaluation: seed members and the users whose negatives' draw lies below
``eval_negative_rate + negative_rate`` (matching.py's ranges). Those rows are kept; the rest of
each chunk is dropped once summarised, so memory grows with the training set, not the table.

Statistics are computed on chunks of at least CHUNK_ROWS rows and merged: a table smaller than
that is one chunk (the same spec as reading it whole), and the robust outlier check
(feature_stats.check_plausible) sees enough of each column for its median to mean something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from lookalike.data.feature_stats import FeatureStatistics, merge_statistics, table_statistics
from lookalike.data.matching import split_draws
from lookalike.data.publisher import read_chunks
from lookalike.data.publisher_ids import IdChecks
from lookalike.privacy.fingerprint import UsersAccumulator, UsersPart

CHUNK_ROWS = 1 << 18


@dataclass
class PublisherPass:
    table: pa.Table  # the rows that may enter training, holdout or evaluation (seed members, low draws)
    draws: np.ndarray  # their split draws
    stats: FeatureStatistics  # of every row
    users: UsersPart  # every row's user
    rows: int  # every row in the window (of this process's share)


def read_publisher(
    source: ds.Dataset,
    dataset: ds.Dataset,
    columns: Sequence[str],
    row_filter: ds.Expression | None,
    path: str,
    kinds: dict[str, list[str]],
    data: Any,
    split_seed: int,
    seed_ids: pa.Array,
    population_rate: float = 0.0,
) -> PublisherPass:
    """Stream ``columns`` of ``source`` (this process's share) once. ``data``: the data config;
    ``population_rate``: randomised response's share of the draws' range, kept too."""
    id_column = str(data.id_column)
    keep_below = float(data.eval_negative_rate) + max(float(data.negative_rate), population_rate)
    users, checks = UsersAccumulator(), IdChecks(id_column, path)
    stats: FeatureStatistics | None = None
    kept: list[pa.Table] = []
    kept_draws: list[np.ndarray] = []
    rows = 0
    for chunk in read_chunks(source, dataset, columns, row_filter, path, CHUNK_ROWS):
        ids = chunk.column(id_column)
        checks.add(ids)
        users.add(ids)
        part = table_statistics(chunk, kinds, data.non_finite, path, data.max_robust_z)
        stats = part if stats is None else merge_statistics([stats, part])
        draws = split_draws(ids, split_seed)
        keep = np.flatnonzero((draws[:, 1] < keep_below) | pc.is_in(ids, value_set=seed_ids).to_numpy(zero_copy_only=False))
        kept.append(chunk.take(pa.array(keep)))  # a copy: the chunk's buffers go with it
        kept_draws.append(draws[keep])
        rows += chunk.num_rows
    checks.finish()
    if stats is None:  # no row in the window: the caller refuses; statistics of nothing
        empty = source.schema.empty_table().select(list(columns))
        stats, kept = table_statistics(empty, kinds, data.non_finite, path, data.max_robust_z), [empty]
    table = pa.concat_tables(kept) if len(kept) > 1 else kept[0]
    draws_all = np.concatenate(kept_draws) if kept_draws else np.zeros((0, 2))
    return PublisherPass(table, draws_all, stats, users.part(), rows)


def chunks_of(source: ds.Dataset, dataset: ds.Dataset, columns: Sequence[str], row_filter: ds.Expression | None, path: str):
    """The same rows again, chunk by chunk (a second pass: the input projection's moments)."""
    return read_chunks(source, dataset, columns, row_filter, path, CHUNK_ROWS)
