"""Logistic regression baseline: one weight per standardised numeric, per category and per
multi-categorical token (mean-pooled), for each audience. Same inputs, same DP-SGD, same metrics
as the two-tower model, so one sweep compares them."""

from __future__ import annotations

import torch
from torch import nn

from lookalike.data.features import MISSING_INDEX, FeatureSpec


class LogisticRegression(nn.Module):
    def __init__(self, spec: FeatureSpec, n_audiences: int, config=None):
        super().__init__()
        self.config = config
        self.numeric = nn.Linear(spec.numeric_width, n_audiences)
        # An embedding of width n_audiences is a one-hot weight table, looked up instead of multiplied.
        self.categorical = nn.ModuleList(nn.Embedding(f.cardinality, n_audiences) for f in spec.categorical)
        self.multi = nn.ModuleList(nn.Embedding(f.cardinality, n_audiences) for f in spec.multi_categorical)
        for table in [*self.categorical, *self.multi]:
            assert isinstance(table, nn.Embedding)
            nn.init.zeros_(table.weight)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        logits = self.numeric(numeric)
        for j, table in enumerate(self.categorical):
            logits = logits + table(categorical[:, j])
        for table, ids in zip(self.multi, multi):
            mask = (ids != MISSING_INDEX).unsqueeze(-1).to(numeric.dtype)
            logits = logits + (table(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return logits
