"""From config to model inputs: scan the publisher, fit features, read and match the seed.

Everything here only reads; it is all done (and all bad input refused) before the ledger is
touched, so a run that fails here costs no budget and leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookalike.data.encode import EncodedFeatures, encode
from lookalike.data.features import (
    FeatureSpec,
    declared_feature_kinds,
    fit_feature_spec,
)
from lookalike.data.matching import TrainingSet, check_publisher_ids, match_seed
from lookalike.data.publisher import (
    ScanStats,
    open_publisher,
    scan_publisher,
    window_filter,
)
from lookalike.data.seed import read_seed
from lookalike.errors import DataError
from lookalike.privacy.fingerprint import data_fingerprint as fingerprint_of
from lookalike.privacy.fingerprint import (
    ledger_fingerprint,
    publisher_fingerprint,
    seed_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    spec: FeatureSpec
    training: TrainingSet
    train_features: EncodedFeatures
    holdout_features: dict[str, EncodedFeatures]
    eval_negative_features: EncodedFeatures
    scan: ScanStats
    publisher_rows: int
    publisher_fingerprint: str
    seed_fingerprint: str

    @property
    def fingerprint(self) -> str:
        return ledger_fingerprint(self.publisher_fingerprint, self.seed_fingerprint)


def data_fingerprint(cfg: Any) -> str:
    """The ledger key of the configured data, without preparing it (used to check a sweep's
    budget before its first trial)."""
    path = str(cfg.data.publisher_path)
    seeds = read_seed(cfg.data.seed_path, cfg.data.id_column, cfg.data.audience_column)
    return fingerprint_of(open_publisher(path).files, Path(path), seeds)


def prepare(cfg: Any) -> PreparedData:
    data = cfg.data
    path = str(data.publisher_path)
    dataset = open_publisher(path)
    if data.id_column not in dataset.schema.names:
        raise DataError(f"publisher data '{path}' has no id column '{data.id_column}': set data.id_column (columns: {', '.join(dataset.schema.names)})")
    window = data.get("window")
    row_filter = window_filter(dataset, window, path)
    exclude = {data.id_column, *(data.get("exclude_columns") or [])}
    if window is not None and window.get("column"):
        exclude.add(window["column"])
    kinds = declared_feature_kinds(data.features, dataset.schema, exclude, path)
    columns = [data.id_column] + [c for names in kinds.values() for c in names]
    table, scan = scan_publisher(dataset, columns, row_filter, path)
    if table.num_rows == 0:
        raise DataError(f"publisher data '{path}' has no rows in the training window (data.window)")
    ids = table.column(data.id_column)
    check_publisher_ids(ids, data.id_column, path)
    spec = fit_feature_spec(table, kinds, data, path)
    log.info("features: %d numeric, %d categorical, %d multi-categorical", len(spec.numeric), len(spec.categorical), len(spec.multi_categorical))

    seeds = read_seed(data.seed_path, data.id_column, data.audience_column)
    training = match_seed(
        ids, seeds,
        min_matching_seed_size=int(cfg.rules.min_matching_seed_size),
        holdout_fraction=float(data.holdout_fraction),
        negative_rate=float(data.negative_rate),
        eval_negative_rate=float(data.eval_negative_rate),
        split_seed=int(cfg.seed),
        trusted=bool(cfg.trusted_evaluation),
    )
    return PreparedData(
        spec=spec,
        training=training,
        train_features=encode(table.take(training.train_rows), spec, path),
        holdout_features={a: encode(table.take(rows), spec, path) for a, rows in training.holdout_rows.items()},
        eval_negative_features=encode(table.take(training.eval_negative_rows), spec, path),
        scan=scan,
        publisher_rows=table.num_rows,
        publisher_fingerprint=publisher_fingerprint(dataset.files, Path(path)),
        seed_fingerprint=seed_fingerprint(seeds),
    )
