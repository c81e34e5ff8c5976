"""Fit the feature spec from statistics that add up across shards of the publisher table.

A spec is fitted from per-column summaries (count, mean and sum of squared deviations for
numerics; value counts for categoricals) rather than from the raw column, so that torchrun ranks
can each summarise their own row groups and merge the summaries: the merged spec is the one a
single process fits on the whole table (the same vocabulary and order, the same mean and
standard deviation up to float rounding). One process takes the same path with one summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike.data.features import (
    CategoricalFeature,
    FeatureSpec,
    MultiCategoricalFeature,
    NumericFeature,
    as_strings,
    numeric_values,
)
from lookalike.data.numeric_bins import ValueHistogram, bin_edges
from lookalike.errors import DataError

# A column whose largest value lies more than this many standard deviations above its mean, and
# that is never negative (an amount, a count), is standardised on the log1p scale: otherwise a
# few large values squeeze everyone else into a sliver of the input range (Adult's capital_gain:
# 92% zeros, a maximum 13 standard deviations out), which a tree splits on but a network hardly sees.
HEAVY_TAIL = 10.0


@dataclass(frozen=True)
class NumericSummary:
    count: int  # non-missing values
    mean: float
    m2: float  # sum of squared deviations from the mean
    has_missing: bool
    low: float = 0.0  # smallest and largest non-missing value
    high: float = 0.0
    log: "NumericSummary | None" = None  # the same of log1p(x), for a column with no negative value
    histogram: ValueHistogram | None = None  # for piecewise-linear bin edges (data/numeric_bins.py)

    @classmethod
    def of(cls, values: np.ndarray, missing: np.ndarray, with_log: bool = True) -> "NumericSummary":
        valid = values[~missing]
        mean = float(valid.mean()) if valid.size else 0.0
        low, high = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 0.0)
        log = cls.of(np.log1p(valid), np.zeros(valid.size, bool), with_log=False) if with_log and low >= 0 else None
        histogram = ValueHistogram.of(valid) if with_log else None
        return cls(int(valid.size), mean, float(np.square(valid - mean).sum()), bool(missing.any()), low, high, log, histogram)

    def merged(self, other: "NumericSummary") -> "NumericSummary":
        """Chan et al.'s pairwise update: exact in exact arithmetic, stable in floating point."""
        n = self.count + other.count
        if not self.count or not other.count:
            base = self if self.count else other
            return replace(base, has_missing=self.has_missing or other.has_missing)
        gap = other.mean - self.mean
        log = self.log.merged(other.log) if self.log is not None and other.log is not None else None
        histogram = self.histogram.merged(other.histogram) if self.histogram is not None and other.histogram is not None else None
        return NumericSummary(
            n,
            self.mean + gap * other.count / n,
            self.m2 + other.m2 + gap * gap * self.count * other.count / n,
            self.has_missing or other.has_missing,
            min(self.low, other.low),
            max(self.high, other.high),
            log,
            histogram,
        )

    def feature(self, name: str, heavy_tail_log: bool = True, bins: int | None = None) -> NumericFeature:
        std = float(np.sqrt(self.m2 / self.count)) if self.count else 1.0
        if not (np.isfinite(self.mean) and np.isfinite(std)):
            # Random bytes in a data page (footer intact) decoded as values up to 6.9e306.
            raise DataError(
                f"publisher data: numeric column '{name}' has values too large to standardise (mean {self.mean:.3g}): "
                "the data is probably damaged; repair it or leave the column out (data.exclude_columns)"
            )
        edges = bin_edges(self.histogram, bins) if bins and self.histogram is not None else []
        if heavy_tail_log and self.log is not None and self.log.count and std > 0 and (self.high - self.mean) / std > HEAVY_TAIL:
            log_std = float(np.sqrt(self.log.m2 / self.log.count))
            return NumericFeature(name, self.log.mean, log_std if log_std > 0 else 1.0, self.has_missing, log=True, edges=edges)
        return NumericFeature(name, self.mean if self.count else 0.0, std if std > 0 else 1.0, self.has_missing, edges=edges)


@dataclass
class FeatureStatistics:
    kinds: dict[str, list[str]]
    numeric: dict[str, NumericSummary] = field(default_factory=dict)
    counts: dict[str, pa.Table] = field(default_factory=dict)  # column -> (value, count), one row per value


def table_statistics(table: pa.Table, kinds: dict[str, list[str]], non_finite: str, path: str, max_robust_z: float | None = None) -> FeatureStatistics:
    """Summarise one table (or one rank's share of it); refuses bad columns as the spec would."""
    stats = FeatureStatistics(kinds)
    for name in kinds["numeric"]:
        values, missing = numeric_values(table.column(name), name, non_finite, path)
        if max_robust_z is not None:
            check_plausible(values[~missing], name, path, float(max_robust_z))
        stats.numeric[name] = NumericSummary.of(values, missing)
    for name in kinds["categorical"]:
        stats.counts[name] = _value_counts(as_strings(table.column(name), name, path, multi=False))
    for name in kinds["multi_categorical"]:
        stats.counts[name] = _value_counts(pc.list_flatten(as_strings(table.column(name), name, path, multi=True)))
    return stats


def check_plausible(values: np.ndarray, name: str, path: str, bound: float) -> None:
    """Refuse a value implausibly far from the rest: more than ``bound`` robust standard
    deviations (1.4826 x the median absolute deviation) from the median. Robust on purpose: one
    wild value inflates the plain standard deviation until it hides itself (its z is at most
    sqrt(n)). Columns with no spread around the median (flags, mostly-zero counts) are skipped."""
    if values.size < 2:
        return
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread == 0 or not np.isfinite(spread):
        return
    worst = int(np.argmax(np.abs(values - median)))
    distance = abs(float(values[worst]) - median) / spread
    if distance > bound:
        raise DataError(
            f"publisher data '{path}': numeric column '{name}' holds {values[worst]:.3g}, {distance:.3g} robust standard "
            f"deviations from its median (data.max_robust_z = {bound:g}): the data may be damaged; repair it, leave the "
            "column out (data.exclude_columns) or raise data.max_robust_z"
        )


def merge_statistics(parts: Sequence[FeatureStatistics]) -> FeatureStatistics:
    """One summary of the whole table from the summaries of its shards."""
    if len(parts) == 1:
        return parts[0]
    merged = FeatureStatistics(parts[0].kinds)
    for name in parts[0].numeric:
        total = parts[0].numeric[name]
        for part in parts[1:]:
            total = total.merged(part.numeric[name])
        merged.numeric[name] = total
    for name in parts[0].counts:
        stacked = pa.concat_tables([part.counts[name] for part in parts])
        summed = stacked.group_by("value").aggregate([("count", "sum")])
        merged.counts[name] = pa.table({"value": summed.column("value"), "count": summed.column("count_sum")})
    return merged


def spec_from_statistics(stats: FeatureStatistics, data_cfg: Any) -> FeatureSpec:
    spec = FeatureSpec(id_column=data_cfg.id_column, non_finite=data_cfg.non_finite)
    bins = data_cfg.piecewise_linear_bins
    spec.numeric = [stats.numeric[name].feature(name, data_cfg.heavy_tail_log, bins) for name in stats.kinds["numeric"]]
    spec.categorical = [CategoricalFeature(name, vocabulary(stats.counts[name], data_cfg.vocab)) for name in stats.kinds["categorical"]]
    spec.multi_categorical = [
        MultiCategoricalFeature(name, vocabulary(stats.counts[name], data_cfg.vocab), int(data_cfg.max_multi_length))
        for name in stats.kinds["multi_categorical"]
    ]
    return spec


def fit_feature_spec(table: pa.Table, kinds: dict[str, list[str]], data_cfg: Any, path: str) -> FeatureSpec:
    """Build vocabularies and standardisation statistics from the (whole) publisher table."""
    return spec_from_statistics(table_statistics(table, kinds, data_cfg.non_finite, path), data_cfg)


def vocabulary(counts: pa.Table, vocab_cfg: Any) -> list[str]:
    """Most frequent values first, at most ``max_size``, each seen at least ``min_count`` times."""
    if counts.num_rows == 0:
        return []
    names = counts.column("value").to_numpy(zero_copy_only=False)
    freq = counts.column("count").to_numpy()
    keep = freq >= int(vocab_cfg.min_count)
    names, freq = names[keep], freq[keep]
    # Stable order: by count descending, ties by value, so refits (and merges of shards, which
    # list values in another order) give the same indices.
    order = np.lexsort((names.astype(str), -freq))[: int(vocab_cfg.max_size)]
    return [str(v) for v in names[order]]


def _value_counts(values: pa.Array) -> pa.Table:
    counts = pc.value_counts(values.drop_null())
    return pa.table({"value": counts.field("values").cast(pa.string()), "count": counts.field("counts").cast(pa.int64())})
