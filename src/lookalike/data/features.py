"""The feature spec: which publisher columns feed the user tower and how they are encoded.

Vocabularies and standardisation statistics come from the publisher's own table (never from the
seed). The spec travels with the model so that export rebuilds exactly the same inputs.
Index convention for every categorical vocabulary: 0 = missing or padding, 1 = out of vocabulary,
2 + i = ``vocabulary[i]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from lookalike.errors import ConfigError, DataError

MISSING_INDEX = 0
OOV_INDEX = 1
FEATURE_KINDS = ("numeric", "categorical", "multi_categorical")


@dataclass
class NumericFeature:
    name: str
    mean: float
    std: float
    # A 0/1 indicator input is added when the publisher data had missing values here.
    missing_flag: bool
    # Heavy-tailed and never negative (counts, amounts): standardised as log1p(x); mean and std
    # are then those of log1p(x). See feature_stats.HEAVY_TAIL.
    log: bool = False
    # Piecewise-linear bin edges (data/numeric_bins.py): len(edges) - 1 inputs after the value
    # (and its flag). Empty: the standardised value alone.
    edges: list[float] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Inputs this column feeds the tower: its value, the missing flag, one per bin."""
        return 1 + int(self.missing_flag) + max(len(self.edges) - 1, 0)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        return ((np.log1p(np.maximum(values, 0.0)) if self.log else values) - self.mean) / self.std

    def typical(self) -> float:
        """A value at the centre of the column, in its own units."""
        return float(np.expm1(self.mean)) if self.log else self.mean


@dataclass
class CategoricalFeature:
    name: str
    vocabulary: list[str]

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 2


@dataclass
class MultiCategoricalFeature(CategoricalFeature):
    max_length: int = 16


@dataclass
class FeatureSpec:
    id_column: str
    numeric: list[NumericFeature] = field(default_factory=list)
    categorical: list[CategoricalFeature] = field(default_factory=list)
    multi_categorical: list[MultiCategoricalFeature] = field(default_factory=list)
    non_finite: str = "refuse"

    @property
    def columns(self) -> list[str]:
        """The publisher columns the model reads (id first)."""
        return [self.id_column] + [f.name for f in self.numeric + self.categorical + self.multi_categorical]

    @property
    def numeric_width(self) -> int:
        return sum(f.width for f in self.numeric)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        raw = json.loads(text)
        return cls(
            id_column=raw["id_column"],
            numeric=[NumericFeature(**f) for f in raw["numeric"]],
            categorical=[CategoricalFeature(**f) for f in raw["categorical"]],
            multi_categorical=[MultiCategoricalFeature(**f) for f in raw["multi_categorical"]],
            non_finite=raw["non_finite"],
        )


def is_number(t: pa.DataType) -> bool:
    """Types read as numeric features (booleans count: they cast to 0/1)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t)


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def infer_feature_kinds(schema: pa.Schema, exclude: set[str]) -> dict[str, list[str]]:
    """Feature kinds from the Arrow schema: numbers are numeric, strings and booleans
    categorical, lists of strings multi-categorical. Other types (dates, structs) are skipped."""
    kinds: dict[str, list[str]] = {k: [] for k in FEATURE_KINDS}
    for f in schema:
        if f.name in exclude:
            continue
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if is_number(t) and not pa.types.is_boolean(t):
            kinds["numeric"].append(f.name)
        elif is_text(t) or pa.types.is_boolean(t):
            kinds["categorical"].append(f.name)
        elif is_list(t):
            kinds["multi_categorical"].append(f.name)
    return kinds


def declared_feature_kinds(features: Any, schema: pa.Schema, exclude: set[str], path: str) -> dict[str, list[str]]:
    """Use ``data.features`` when given (checking every column exists), else infer."""
    if features is None:
        kinds = infer_feature_kinds(schema, exclude)
        if not any(kinds.values()):
            raise DataError(f"publisher data '{path}' has no usable feature columns besides the id: declare them in data.features")
        return kinds
    unknown = set(features) - set(FEATURE_KINDS)
    if unknown:
        raise ConfigError(f"data.features.{sorted(unknown)[0]}", f"unknown feature kind; use {', '.join(FEATURE_KINDS)}")
    kinds = {k: list(features.get(k) or []) for k in FEATURE_KINDS}
    seen: set[str] = set()
    for kind, names in kinds.items():
        for name in names:
            if name not in schema.names:
                raise ConfigError(f"data.features.{kind}", f"column '{name}' is not in publisher data '{path}' (columns: {', '.join(schema.names)})")
            if name in seen or name in exclude:
                raise ConfigError(f"data.features.{kind}", f"column '{name}' is declared twice or is the id/window column")
            seen.add(name)
    if not seen:
        raise ConfigError("data.features", "declares no feature columns")
    return kinds


def numeric_values(column: pa.ChunkedArray, name: str, policy: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a missing mask; NaN/inf are refused or imputed per ``data.non_finite``."""
    t = column.type
    if not is_number(t):
        raise DataError(f"publisher data '{path}': numeric column '{name}' has type {t}: store numbers, or declare it categorical in data.features")
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    non_finite = ~np.isfinite(values) & ~nulls
    if non_finite.any() and policy != "impute":
        raise DataError(
            f"publisher data '{path}': numeric column '{name}' has {int(non_finite.sum())} NaN/inf values: "
            "fix them upstream or set data.non_finite=impute (they are then treated as missing, with a flag input)"
        )
    return values, nulls | non_finite


def as_strings(column: pa.ChunkedArray, name: str, path: str, multi: bool) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if multi:
        if not is_list(column.type):
            raise DataError(f"publisher data '{path}': multi-categorical column '{name}' has type {column.type}: it must be a list column")
        if pa.types.is_nested(column.type.value_type):  # Arrow cannot cast list<list<...>> to list<string>
            raise DataError(
                f"publisher data '{path}': multi-categorical column '{name}' has type {column.type}: "
                f"use a list of strings (flatten it upstream) or leave it out with data.exclude_columns=[{name}]"
            )
        return column.cast(pa.list_(pa.string()))
    if is_list(column.type) or pa.types.is_struct(column.type):
        raise DataError(f"publisher data '{path}': categorical column '{name}' has type {column.type}: declare it multi_categorical or drop it")
    return column.cast(pa.string())
