"""Piecewise-linear encoding of numeric features (Gorishniy, Rubachev and Babenko, "On Embeddings
for Numerical Features in Tabular Deep Learning", 2022).

A numeric column with bin edges e_0 < e_1 < ... < e_k becomes k inputs beside its standardised
value: input t is 0 below bin t, 1 above it and (x - e_t) / (e_{t+1} - e_t) inside it. A linear
layer on these is any piecewise-linear function of x, so the tower fits a shape such as "a capital
gain above 7,000 almost always means a high income", which a tree finds with one split and a
network on the standardised value alone hardly sees.

The edges are quantiles of the publisher's own column (never of the seed), with one twist: a value
that holds at least 1/k of the rows (an atom: Adult's capital gain is 0 for 92% of people) is an
edge of its own and the remaining edges are quantiles of the other values. Plain quantiles would
put most edges on the atom and leave the informative tail in one or two bins.

Edges come from a histogram of the column rounded to ``SIGNIFICANT_DIGITS`` significant digits:
bounded in size for a continuous column, and additive, so torchrun ranks merge their shards'
histograms into the one a single process builds from the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGNIFICANT_DIGITS = 3


def rounded(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to SIGNIFICANT_DIGITS significant digits (0 stays 0; integers below
    10 ** SIGNIFICANT_DIGITS stay exact)."""
    out = np.asarray(values, dtype=np.float64).copy()
    nonzero = out != 0
    if nonzero.any():
        scale = 10.0 ** (np.floor(np.log10(np.abs(out[nonzero]))) - (SIGNIFICANT_DIGITS - 1))
        out[nonzero] = np.round(out[nonzero] / scale) * scale
    return out


@dataclass(frozen=True, eq=False)
class ValueHistogram:
    """Distinct rounded values of a column (ascending) and how many rows hold each."""

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> "ValueHistogram":
        distinct, counts = np.unique(rounded(values), return_counts=True)
        return cls(distinct, counts.astype(np.int64))

    def merged(self, other: "ValueHistogram") -> "ValueHistogram":
        distinct, where = np.unique(np.concatenate([self.values, other.values]), return_inverse=True)
        counts = np.zeros(distinct.size, dtype=np.int64)
        np.add.at(counts, where, np.concatenate([self.counts, other.counts]))
        return ValueHistogram(distinct, counts)


def bin_edges(histogram: ValueHistogram, bins: int) -> list[float]:
    """At most ``bins`` bins: atoms (values holding >= 1/bins of the rows) are edges, the other
    edges are quantiles of the remaining values. [] for a column with fewer than two values."""
    values, counts = histogram.values, histogram.counts
    total = int(counts.sum())
    if values.size < 2 or total == 0:
        return []
    atom = counts * bins >= total
    rest_values, rest_counts = values[~atom], counts[~atom]
    inner = np.empty(0)
    spare = bins - int(atom.sum())
    if rest_values.size and spare > 0:
        cdf = np.cumsum(rest_counts) / rest_counts.sum()
        at = np.searchsorted(cdf, np.linspace(0.0, 1.0, spare + 1), side="left")
        inner = rest_values[np.minimum(at, rest_values.size - 1)]
    edges = np.unique(np.concatenate([values[atom], inner, values[[0, -1]]]))
    return [float(e) for e in edges] if edges.size >= 2 else []


def piecewise_linear(values: np.ndarray, edges: list[float], out: np.ndarray | None = None, missing: np.ndarray | None = None) -> np.ndarray:
    """[n, len(edges) - 1] float32: each value's position through each bin, clipped to [0, 1].

    Written into ``out`` when given (a slice of the encoded matrix: no temporaries of the full
    width, which at export's millions of rows cost more than the arithmetic), computed in float32
    like the matrix it lands in; rows flagged in ``missing`` (or NaN) are 0."""
    e = np.asarray(edges, dtype=np.float64)
    low, scale = e[:-1].astype(np.float32), (1.0 / np.diff(e)).astype(np.float32)
    v = np.asarray(values, dtype=np.float32)
    if out is None:
        out = np.empty((v.shape[0], low.size), dtype=np.float32)
    with np.errstate(invalid="ignore"):  # NaN rows are zeroed below
        np.subtract(v[:, None], low, out=out)
        np.multiply(out, scale, out=out)
        np.clip(out, 0.0, 1.0, out=out)
    gone = np.isnan(v) if missing is None else (missing | np.isnan(v))
    if gone.any():
        out[gone] = 0.0
    return out
