"""The ``data`` section: where the publisher table and the seed are, and how they are read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from lookalike.errors import ConfigError
from lookalike.settings import one_of, require, set_value, whole


@dataclass
class WindowConfig:
    """Only publisher rows with ``start <= column < end`` (a date, time or number column)."""

    column: Optional[str] = None  # a date, time or number column (a partition column too); null: every row
    start: Any = None  # inclusive; null: no lower bound
    end: Any = None  # exclusive; null: no upper bound


@dataclass
class VocabConfig:
    max_size: int = 100_000  # most frequent values kept per column; the rest share an out-of-vocabulary bucket
    min_count: int = 1  # a value seen fewer times goes to the out-of-vocabulary bucket

    def check(self) -> None:
        whole("data.vocab.max_size", self.max_size)
        whole("data.vocab.min_count", self.min_count)


@dataclass
class DataConfig:
    publisher_path: str = "data/demo/publisher"  # a Parquet file or folder (hive partitions allowed), one row per user
    # One file, a list of files (one audience each, named by the file stem) or a mapping
    # audience -> file: typed Any because OmegaConf cannot type a union of str, list and dict.
    seed_path: Any = None
    id_column: str = "user_id"  # the user id column (strings) of the publisher table and the seed
    audience_column: str = "audience"  # in a single seed file, this column (if present) splits the ids into audiences
    # null: infer from the column types; else {numeric: [...], categorical: [...], multi_categorical: [...]}
    features: Optional[dict[str, Any]] = None
    exclude_columns: list[str] = field(default_factory=list)  # columns that are not features (the demo partitions by signup cohort)
    window: WindowConfig = field(default_factory=WindowConfig)
    non_finite: str = "refuse"  # refuse: NaN/inf in a numeric column stops the run; impute: treat them as missing (mean + flag)
    max_robust_z: Optional[float] = 1.0e6  # refuse a value this many robust standard deviations (1.4826 x MAD) from its median; null: no check
    # A never-negative column with its maximum > 10 standard deviations above its mean is read as
    # log1p(x) (data/feature_stats.py: HEAVY_TAIL); false: every numeric as is.
    heavy_tail_log: bool = True
    # Each numeric column also enters as piecewise-linear bins (data/numeric_bins.py), at most
    # this many, edges from the publisher's own column. null: the standardised value alone.
    piecewise_linear_bins: Optional[int] = 32
    vocab: VocabConfig = field(default_factory=VocabConfig)
    max_multi_length: int = 16  # values of a list column kept per user (longer lists are cut)
    holdout_fraction: float = 0.2  # share of each audience's matched seed users held out for evaluation, never trained on
    negative_rate: float = 0.15  # share of all users not held out (seed users too) drawn as the training background, per user by a keyed hash
    eval_negative_rate: float = 0.05  # share of non-seed users drawn as evaluation negatives, never trained on

    def check(self) -> None:
        set_value("data.publisher_path", self.publisher_path)
        set_value("data.id_column", self.id_column)
        require("data.negative_rate", self.negative_rate, lambda v: 0 <= v <= 1, "must be in [0, 1] (the share of non-seed users used as negatives)")
        require("data.eval_negative_rate", self.eval_negative_rate, lambda v: 0 <= v <= 1, "must be in [0, 1]")
        if self.negative_rate + self.eval_negative_rate > 1:
            raise ConfigError("data.negative_rate", "plus data.eval_negative_rate must not exceed 1")
        require("data.holdout_fraction", self.holdout_fraction, lambda v: 0 <= v < 1, "must be in [0, 1)")
        whole("data.max_multi_length", self.max_multi_length)
        if self.piecewise_linear_bins is not None:
            whole("data.piecewise_linear_bins", self.piecewise_linear_bins, low=2, high=256)
        if self.max_robust_z is not None:
            require("data.max_robust_z", self.max_robust_z, lambda v: v > 0, "must be > 0 (or null: no check)")
        one_of("data.non_finite", self.non_finite, ("refuse", "impute"))
        self.seed_path = seed_path_value(self.seed_path)


def seed_path_value(value: Any) -> Any:
    """``data.seed_path`` as a str, a list of str or a dict str -> str. Any lets through what the
    old ``Optional[str]`` converted (a number, ``data.seed_path=123``: a file named 123) and what
    it refused (nested lists or mappings), so both are settled here."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and value and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    raise ConfigError("data.seed_path", f"{value!r} is not a file, a list of files or a mapping audience -> file: e.g. '{{buyers: b.jsonl, visitors: v.csv}}'")
