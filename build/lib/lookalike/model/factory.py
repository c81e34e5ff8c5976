"""Build the model a config names (``model.kind``): the two-tower model or a baseline."""

from __future__ import annotations

from torch import nn

from lookalike.data.features import FeatureSpec
from lookalike.model.centroid import CentroidSimilarity
from lookalike.model.logistic import LogisticRegression
from lookalike.model.towers import ModelConfig, TwoTower

KINDS = ("two_tower", "logistic", "centroid")


def build_model(spec: FeatureSpec, n_audiences: int, cfg: ModelConfig) -> nn.Module:
    if cfg.kind == "two_tower":
        return TwoTower(spec, n_audiences, cfg)
    if cfg.kind == "logistic":
        return LogisticRegression(spec, n_audiences, cfg)
    if cfg.kind == "centroid":
        return CentroidSimilarity(spec, n_audiences, cfg)
    raise ValueError(f"unknown model kind {cfg.kind!r}; use one of {', '.join(KINDS)}")
