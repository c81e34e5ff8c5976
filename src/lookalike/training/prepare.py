"""From config to model inputs: scan the publisher, fit features, read and match the seed.

Everything here only reads; it is all done (and all bad input refused) before the ledger is
touched, so a run that fails here costs no budget and leaves nothing behind.

Under torchrun every rank reads only its share of the Parquet row groups and the statistics that
must describe the whole table are combined across ranks (collective.py): the feature spec, the
seed match counts and the duplicate-id check. Each rank keeps its own training rows; rank 0 also
gets every rank's held-out users, since it alone evaluates. One process runs the same code with
itself as the only rank.

The publisher rows are streamed (data/publisher_pass.py): statistics, the users' hashes and the
split are taken chunk by chunk, and only the rows that can enter training, holdout or evaluation
are kept, so memory grows with the training set (seed plus sampled negatives), not the table.
The input projection, where one is fitted, streams the rows a second time.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from lookalike.data.encode import EncodedFeatures, concat, encode
from lookalike.data.feature_stats import merge_statistics, spec_from_statistics
from lookalike.data.features import FeatureSpec, declared_feature_kinds
from lookalike.data.matching import TrainingSet, in_background_range, lay_out, refuse_duplicates
from lookalike.data.principal_inputs import MAX_WIDTH, InputMoments, InputProjection, check_width, dense_width, principal_projection
from lookalike.data.publisher import ScanStats, open_publisher, publisher_source, scan_cost, window_filter
from lookalike.data.publisher_ids import duplicate_suspects, reread_ids, scan_users
from lookalike.data.publisher_pass import chunks_of, read_publisher
from lookalike.data.seed import read_seed
from lookalike.errors import ConfigError, DataError
from lookalike.model.config import MANY_SEED_COMPONENTS
from lookalike.parallel.collective import Collective
from lookalike.privacy.fingerprint import UsersKey, merge_parts
from lookalike.training.config import TrainConfig
from lookalike.training.mechanism_rule import may_use_label_rr, population_rate

log = logging.getLogger(__name__)
TRAIN_COUNT = "\0training examples"  # beside the audience names in the counts summed over ranks
IN_BACKGROUND_RANGE = "\0background draws"  # publisher users whose draw falls in the negatives' range


@dataclass
class PreparedData:
    spec: FeatureSpec
    training: TrainingSet  # this process's rows; its ``matched`` counts are the whole table's
    train_features: EncodedFeatures  # this process's training examples
    holdout_features: dict[str, EncodedFeatures]  # every rank's, on rank 0 (empty elsewhere)
    eval_negative_features: EncodedFeatures  # likewise
    scan: ScanStats  # the whole scan
    publisher_rows: int  # in the window, over all ranks
    n_train: int  # training examples over all ranks: exact, seed-derived; never released outside trusted mode
    users: UsersKey  # who the publisher users in the window are: what the ledger's budget covers
    projection: InputProjection | None = None  # model.input_projection's, from every publisher user
    # Publisher users whose keyed draw puts them in the negatives' range, seed or not: public (ids
    # and the split seed only). The training set is these, less held-out seed users, plus the seed.
    in_background_range: int = 0
    # Private tuning's reference population (one process only): every user whose draw is in the
    # evaluation range, seed or not, so a threshold on their scores is public given the model.
    reference_features: EncodedFeatures | None = None
    # Randomised response's population (training.population_rows), encoded on demand; None: none.
    population_features: Callable[[], EncodedFeatures] | None = None


def data_users(cfg: TrainConfig) -> UsersKey:
    """The users key of the configured data, without preparing it (used to check a sweep's
    budget before its first trial). Streamed: the ids are never held all at once."""
    path = str(cfg.data.publisher_path)
    dataset = open_publisher(path)
    row_filter = window_filter(dataset, cfg.data.window, path)
    return merge_parts([scan_users(dataset, cfg.data.id_column, row_filter, path)])


def prepare(cfg: TrainConfig, collective: Collective | None = None) -> PreparedData:
    col = collective or Collective()
    data = cfg.data
    path = str(data.publisher_path)
    dataset = open_publisher(path)
    if data.id_column not in dataset.schema.names:
        raise DataError(f"publisher data '{path}' has no id column '{data.id_column}': set data.id_column (columns: {', '.join(dataset.schema.names)})")
    window = data.window
    row_filter = window_filter(dataset, window, path)
    exclude = {data.id_column, *data.exclude_columns}
    if window.column:
        exclude.add(window.column)
    kinds = declared_feature_kinds(data.features, dataset.schema, exclude, path)
    columns = [data.id_column] + [c for names in kinds.values() for c in names]
    share = (col.rank, col.size) if col.size > 1 else None
    # Read before the publisher rows: which rows to keep depends on who is in the seed. Nothing
    # fitted on every user (the feature spec, the input projection) reads it.
    seeds = read_seed(data.seed_path, data.id_column, data.audience_column)
    seed_ids = pa.array(np.unique(np.concatenate(list(seeds.values()))) if seeds else [], type=pa.string())

    # Randomised response's population, as a share of the draws' range (0: this run cannot use it).
    pop_rate = population_rate(cfg, _file_rows(dataset) if may_use_label_rr(cfg, col.size) else None, col.size)

    def read_and_summarise():
        source, fragments = publisher_source(dataset, columns, row_filter, path, share)
        read = read_publisher(source, dataset, columns, row_filter, path, kinds, data, int(cfg.seed), seed_ids, pop_rate)
        return (read, source, scan_cost(fragments, columns, read.rows, share)), (read.rows, read.stats, read.users)

    (read, source, scan), parts = col.exchange(read_and_summarise)
    table, draws = read.table, read.draws
    rows = sum(n for n, _, _ in parts)
    if rows == 0:
        raise DataError(f"publisher data '{path}' has no rows in the training window (data.window)")
    users = merge_parts([users for _, _, users in parts])  # every rank's users: each rank finds the same repeats
    suspects = duplicate_suspects(users.hashes if users.hashes is not None else np.zeros(0, np.uint64))
    if suspects.size:
        found = col.each(lambda: reread_ids(source, data.id_column, row_filter)(suspects))
        col.each(lambda: refuse_duplicates(pa.concat_arrays(found), data.id_column, path))
    spec = spec_from_statistics(merge_statistics([stats for _, stats, _ in parts]), data)
    log.info("features: %d numeric, %d categorical, %d multi-categorical", len(spec.numeric), len(spec.categorical), len(spec.multi_categorical))

    projection = _input_projection(lambda: chunks_of(source, dataset, columns, row_filter, path), spec, cfg, col)
    ids = table.column(data.id_column)
    training, totals = col.total(lambda: _lay_out(ids, seeds, data, draws, pop_rate))
    n_train = totals.pop(TRAIN_COUNT)
    in_background_range = totals.pop(IN_BACKGROUND_RANGE)
    training.matched = totals  # checked against the owners' minimum once their rules are read
    if cfg.label_rr and not training.population_rows.size:
        # The population's size is public (keyed draws of the ids only): refused before any charge.
        raise ConfigError("privacy.label_rr_users", "leaves randomised response no publisher user to train on: raise it (or lower data.holdout_fraction)")

    def encode_mine():
        train = encode(table.take(training.train_rows), spec, path)
        holdout = {a: encode(table.take(r), spec, path) for a, r in training.holdout_rows.items()}
        return train, (holdout, encode(table.take(training.eval_negative_rows), spec, path))

    train_features, evaluation = col.collect(encode_mine)
    holdout, eval_negatives = _joined(evaluation, training.audiences) if evaluation else _nothing(train_features, training.audiences)
    reference = encode(table.take(training.reference_rows), spec, path) if cfg.tuning.mean_trials is not None and col.size == 1 else None
    # Encoded only if the run trains by randomised response (decided after its DP counts); until
    # then the kept rows stay as Arrow columns, far smaller than their encoding.
    population = functools.partial(_encode_rows, table, training.population_rows, spec, path) if training.population_rows.size else None
    return PreparedData(
        spec=spec,
        training=training,
        train_features=train_features,
        holdout_features=holdout,
        eval_negative_features=eval_negatives,
        scan=replace(scan, rows_in_window=rows),
        publisher_rows=rows,
        n_train=n_train,
        users=users,
        projection=projection,
        in_background_range=in_background_range,
        reference_features=reference,
        population_features=population,
    )


def _file_rows(dataset: Any) -> int | None:
    """The rows the publisher's files hold, from their footers (public, before the window): the
    scale of randomised response's population. None where a footer cannot be read (the streamed
    pass then refuses the file in one line naming it)."""
    try:
        return int(dataset.count_rows())
    except (pa.ArrowException, OSError):
        return None


def _encode_rows(table: pa.Table, rows: np.ndarray, spec: FeatureSpec, path: str) -> EncodedFeatures:
    return encode(table.take(rows), spec, path)


def _input_projection(chunks: Callable[[], Iterator[pa.Table]], spec: FeatureSpec, cfg: TrainConfig, col: Collective) -> InputProjection | None:
    """The principal components of every publisher user in the window (all ranks), seed or not,
    from every row of the table (not the rows kept for training): nothing about the seed can
    enter them. Fitted for ``model.input_projection``,
    and for the small-seed rule (training/model_rule.py) where it may apply, in this run or in one
    of its private-tuning trials (never to a tower of your own), and the features fit. A second
    streamed pass over the rows."""
    model = cfg.model
    k = model.input_projection
    rule = model.small_seed_users is not None and cfg.privacy.enabled and not cfg.label_rr  # the rule is for DP-SGD runs
    if cfg.tuning.mean_trials is not None:
        rule = rule or any(v is not None for v in cfg.tuning.choices().get("model.small_seed_users", []))
    if k:
        check_width(spec, k)
    elif model.kind == "two_tower" and not model.custom_tower and rule and not cfg.audit.enabled and dense_width(spec) <= MAX_WIDTH:
        k = min(MANY_SEED_COMPONENTS, dense_width(spec))
    else:
        return None

    def moments() -> InputMoments:
        parts = [InputMoments.of(encode(chunk, spec, str(cfg.data.publisher_path)), spec) for chunk in chunks()]
        return functools.reduce(InputMoments.merged, parts)

    _, parts = col.exchange(lambda: (None, moments()))
    return principal_projection(functools.reduce(InputMoments.merged, parts), k)


def _lay_out(ids: pa.ChunkedArray, seeds: dict[str, np.ndarray], data: Any, draws: np.ndarray, pop_rate: float) -> tuple[TrainingSet, dict[str, int]]:
    training = lay_out(
        ids,
        seeds,
        holdout_fraction=float(data.holdout_fraction),
        negative_rate=float(data.negative_rate),
        eval_negative_rate=float(data.eval_negative_rate),
        draws=draws,
        population_rate=pop_rate,
    )
    in_range = int(in_background_range(draws, float(data.negative_rate), float(data.eval_negative_rate)).sum())
    return training, training.matched | {TRAIN_COUNT: training.n_train, IN_BACKGROUND_RANGE: in_range}


def _joined(parts: list, audiences: list[str]) -> tuple[dict[str, EncodedFeatures], EncodedFeatures]:
    """Rank 0's view of every rank's held-out users and evaluation negatives."""
    holdout, negatives = parts[0]
    for more_holdout, more_negatives in parts[1:]:
        holdout = {a: concat(holdout[a], more_holdout[a]) for a in audiences}
        negatives = concat(negatives, more_negatives)
    return holdout, negatives


def _nothing(like: EncodedFeatures, audiences: list[str]) -> tuple[dict[str, EncodedFeatures], EncodedFeatures]:
    empty = like.take(np.zeros(0, dtype=np.int64))
    return {a: empty for a in audiences}, empty
