"""Turn publisher rows into model inputs with a fitted :class:`FeatureSpec`, vectorised in Arrow.

Used for training (the whole window at once) and by export (one record batch at a time), so no
step here loops over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lookalike.data.features import (
    MISSING_INDEX,
    OOV_INDEX,
    CategoricalFeature,
    FeatureSpec,
    MultiCategoricalFeature,
    numeric_values,
)
from lookalike.data.numeric_bins import piecewise_linear


@dataclass
class EncodedFeatures:
    """Model inputs for ``n`` users: standardised numerics and vocabulary indices."""

    numeric: np.ndarray  # float32 [n, spec.numeric_width]: per column its value, flag, bins
    categorical: np.ndarray  # int64 [n, len(spec.categorical)]
    multi: list[np.ndarray]  # one int64 [n, max_length] per multi-categorical feature

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """The inputs in the order :class:`~lookalike.model.towers.TwoTower` takes them."""
        return [torch.from_numpy(self.numeric), torch.from_numpy(self.categorical)] + [torch.from_numpy(m) for m in self.multi]

    def take(self, rows: np.ndarray) -> "EncodedFeatures":
        return EncodedFeatures(self.numeric[rows], self.categorical[rows], [m[rows] for m in self.multi])


def concat(a: EncodedFeatures, b: EncodedFeatures) -> EncodedFeatures:
    return EncodedFeatures(
        np.concatenate([a.numeric, b.numeric]), np.concatenate([a.categorical, b.categorical]), [np.concatenate([x, y]) for x, y in zip(a.multi, b.multi)]
    )


def encode(table: pa.Table | pa.RecordBatch, spec: FeatureSpec, path: str = "<publisher>") -> EncodedFeatures:
    n = table.num_rows
    numeric = np.zeros((n, spec.numeric_width), dtype=np.float32)
    col = 0
    for feature in spec.numeric:
        values, missing = numeric_values(table.column(feature.name), feature.name, spec.non_finite, path)
        # Missing values sit at the mean (0 after standardising); the flag input marks them.
        numeric[:, col] = np.where(missing, 0.0, feature.scaled(values))
        col += 1
        if feature.missing_flag:
            numeric[:, col] = missing
            col += 1
        if feature.edges:
            bins = len(feature.edges) - 1
            piecewise_linear(values, feature.edges, out=numeric[:, col : col + bins], missing=missing)
            col += bins
    categorical = np.zeros((n, len(spec.categorical)), dtype=np.int64)
    for j, cat in enumerate(spec.categorical):
        categorical[:, j] = _indices(_strings(table.column(cat.name), pa.string()), cat)
    multi = [_encode_multi(table.column(f.name), f) for f in spec.multi_categorical]
    return EncodedFeatures(numeric, categorical, multi)


def _strings(column: pa.ChunkedArray | pa.Array, target: pa.DataType) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    # Casting a list column to its own type still copies it (and, on a slice of a batch, its
    # whole child array): skip the no-op cast.
    return column if column.type == target else column.cast(target)


def _indices(values: pa.Array, feature: CategoricalFeature) -> np.ndarray:
    """0 for missing, 1 for out-of-vocabulary, 2 + position otherwise."""
    position = pc.index_in(values, value_set=pa.array(feature.vocabulary, type=pa.string()))
    found = position.is_valid().to_numpy(zero_copy_only=False)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    idx = position.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64) + 2
    return np.where(found, idx, np.where(present, OOV_INDEX, MISSING_INDEX))


def _encode_multi(column: pa.ChunkedArray, feature: MultiCategoricalFeature) -> np.ndarray:
    """Pad each user's list to ``max_length`` (0 = padding); lists longer than that are cut."""
    lists = _strings(column, pa.list_(pa.string()))
    n, width = len(lists), feature.max_length
    out = np.zeros((n, width), dtype=np.int64)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return out
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(flat)) - np.repeat(starts, lengths)
    keep = position < width
    out[rows[keep], position[keep]] = _indices(flat, feature)[keep]
    return out
