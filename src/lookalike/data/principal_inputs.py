"""Principal components of the publisher's encoded features: an input projection for the user
tower learned without the seed (``model.input_projection``).

A user's dense input vector is [numeric inputs (standardised values, flags, bins), a one-hot per
categorical, the mean one-hot of each list]. Its top-k principal directions, whitened, come from
the mean and second moment of that vector over every publisher user in the training window, so
they are a function of the publisher's own table only (PRIVACY.md: public, like the vocabularies)
and cost no epsilon. With the projection the tower trains on k inputs instead of hundreds: under
DP-SGD every trainable weight takes noise at every step, and with a small seed (a few hundred
users) fewer weights keep more of the signal.

The moments add up across torchrun shards, so every rank fits the same projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lookalike.data.encode import EncodedFeatures
from lookalike.data.features import MISSING_INDEX, FeatureSpec
from lookalike.errors import ConfigError

MAX_WIDTH = 4096  # the dense vector's width; its second moment is MAX_WIDTH^2 float64 (128 MiB)
CHUNK = 4096  # users turned dense at once


def dense_width(spec: FeatureSpec) -> int:
    return spec.numeric_width + sum(f.cardinality for f in spec.categorical + spec.multi_categorical)


def dense_inputs(features: EncodedFeatures, spec: FeatureSpec) -> np.ndarray:
    """[n, dense_width] float64: numerics, then each categorical's one-hot (its missing index
    included), then each list's mean one-hot over its non-padding entries."""
    n = len(features)
    out = np.zeros((n, dense_width(spec)), dtype=np.float64)
    out[:, : spec.numeric_width] = features.numeric
    start, rows = spec.numeric_width, np.arange(n)
    for j, cat in enumerate(spec.categorical):
        out[rows, start + features.categorical[:, j]] = 1.0
        start += cat.cardinality
    for ids, multi in zip(features.multi, spec.multi_categorical):
        present = ids != MISSING_INDEX
        weight = present / np.maximum(present.sum(1, keepdims=True), 1)
        np.add.at(out, (np.repeat(rows, ids.shape[1]), start + ids.ravel()), weight.ravel())
        start += multi.cardinality
    return out


@dataclass(frozen=True, eq=False)
class InputMoments:
    count: int
    total: np.ndarray  # [width] sum of the dense vectors
    gram: np.ndarray  # [width, width] sum of their outer products

    @classmethod
    def of(cls, features: EncodedFeatures, spec: FeatureSpec) -> "InputMoments":
        width = dense_width(spec)
        total, gram = np.zeros(width), np.zeros((width, width))
        for start in range(0, len(features), CHUNK):
            x = dense_inputs(features.take(np.arange(start, min(start + CHUNK, len(features)))), spec)
            total += x.sum(0)
            gram += x.T @ x
        return cls(len(features), total, gram)

    def merged(self, other: "InputMoments") -> "InputMoments":
        return InputMoments(self.count + other.count, self.total + other.total, self.gram + other.gram)


@dataclass(frozen=True, eq=False)
class InputProjection:
    """z = (x - mean) @ matrix: the top-k principal components, each of unit variance."""

    mean: np.ndarray  # [width]
    matrix: np.ndarray  # [width, k]

    def apply(self, dense: np.ndarray) -> np.ndarray:
        return (dense - self.mean) @ self.matrix

    def leading(self, k: int) -> "InputProjection":
        """The top ``k`` of these components: what a fit of ``k`` would give (each is whitened alone)."""
        if k > self.matrix.shape[1]:
            raise ValueError(f"{k} components asked of a projection fitted with {self.matrix.shape[1]}")
        return self if k == self.matrix.shape[1] else InputProjection(self.mean, self.matrix[:, :k])


def check_width(spec: FeatureSpec, k: int) -> None:
    """Refuse a projection the features cannot carry, before any data is read twice."""
    width = dense_width(spec)
    if width > MAX_WIDTH:
        raise ConfigError(
            "model.input_projection",
            f"the encoded features are {width} wide (numerics plus every vocabulary), above {MAX_WIDTH}: "
            "lower data.vocab.max_size or set model.input_projection=null",
        )
    if k > width:
        raise ConfigError("model.input_projection", f"{k} components asked for, but the encoded features are only {width} wide")


RANK_TOLERANCE = 1e-6  # a component whose spread is below this share of the largest's has none


def principal_projection(moments: InputMoments, k: int) -> InputProjection:
    """The whitened top-k eigenvectors of the covariance; a direction without variance (fewer
    distinct users than k, or inputs that are linear in each other) gets weight 0 rather than a
    division by zero or by rounding error."""
    mean = moments.total / max(moments.count, 1)
    covariance = moments.gram / max(moments.count, 1) - np.outer(mean, mean)
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    top = np.argsort(values)[::-1][:k]
    spread = np.sqrt(np.clip(values[top], 0.0, None))
    # The covariance is a difference of float64 sums: a direction the inputs cannot vary in (the
    # bins of a column with few values, one-hots that sum to 1) keeps an eigenvalue of rounding
    # error, about 1e-16 of the largest, a spread of 1e-8 of the largest's. Whitening it would
    # multiply noise by 1e8 and drown every real component of a user's vector.
    scale = np.divide(1.0, spread, out=np.zeros_like(spread), where=spread > RANK_TOLERANCE * max(float(spread.max(initial=0.0)), 1e-300))
    matrix = vectors[:, top] * scale
    # eigh's signs are arbitrary: fix each direction's largest entry positive, so refits agree.
    flip = np.sign(matrix[np.abs(matrix).argmax(0), np.arange(matrix.shape[1])])
    return InputProjection(mean, matrix * np.where(flip == 0, 1.0, flip))
