"""Every model kind in one place: what it is, how it is built and how it trains.

``model.kind`` picks one. A *learned* kind trains with DP-SGD (training/loop.py): its sample rate
needs the DP estimate of the training-set size. The centroid baseline is not learned: one noisy
release of the seed users' feature sums (training/centroid_fit.py), no loop, no size estimate,
and a single process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from lookalike.data.features import FeatureSpec
from lookalike.errors import ConfigError
from lookalike.model.centroid import CentroidSimilarity
from lookalike.model.config import ModelConfig
from lookalike.model.logistic import LogisticRegression
from lookalike.model.towers import TwoTower


@dataclass(frozen=True)
class ModelKind:
    name: str
    build: Callable[[FeatureSpec, int, ModelConfig], nn.Module]
    learned: bool  # True: DP-SGD epochs; False: one release (no loop, no size estimate, no torchrun)
    description: str


REGISTRY = {
    kind.name: kind
    for kind in (
        ModelKind("two_tower", TwoTower, True, "user tower and audience tower, scored by their similarity"),
        ModelKind("logistic", LogisticRegression, True, "one weight per feature value and audience (a baseline)"),
        ModelKind("centroid", CentroidSimilarity, False, "cosine to the noisy sum of seed users' feature vectors (a baseline)"),
    )
}
KINDS = tuple(REGISTRY)


def model_kind(name: str) -> ModelKind:
    if name not in REGISTRY:
        raise ConfigError("model.kind", f"'{name}' is not one of {', '.join(KINDS)} (pick with model=two_tower, model=logistic or model=centroid)")
    return REGISTRY[name]


def build_model(spec: FeatureSpec, n_audiences: int, cfg: ModelConfig) -> nn.Module:
    return model_kind(cfg.kind).build(spec, n_audiences, cfg)
