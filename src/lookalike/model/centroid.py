"""Centroid-similarity baseline: no learning, a user's score for an audience is the cosine
between the user's feature vector and the sum of the seed users' vectors.

A user's vector is [standardised numerics (clipped to norm ``clip``), a one-hot per categorical,
the mean one-hot of each multi-categorical list]; its norm is at most
sqrt(clip^2 + categoricals + multi-categoricals), which bounds one user's contribution to each
audience's sum. Under DP the sums get Gaussian noise for that sensitivity (times sqrt(audiences):
a user can be in every seed), calibrated so the accountant reports the target epsilon.
Cosine ignores the centroid's length, so no (noisy) count is needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lookalike.data.features import MISSING_INDEX, FeatureSpec
from lookalike.privacy.mechanisms import entropy_generator


class CentroidSimilarity(nn.Module):
    numeric: torch.Tensor  # [A, numeric width]: each audience's noisy sum (a buffer)

    def __init__(self, spec: FeatureSpec, n_audiences: int, config=None, clip: float = 3.0):
        super().__init__()
        self.config, self.clip = config, clip
        self.register_buffer("numeric", torch.zeros(n_audiences, spec.numeric_width))
        self.categorical = nn.ParameterList(nn.Parameter(torch.zeros(n_audiences, f.cardinality), requires_grad=False) for f in spec.categorical)
        self.multi = nn.ParameterList(nn.Parameter(torch.zeros(n_audiences, f.cardinality), requires_grad=False) for f in spec.multi_categorical)

    def sensitivity(self) -> float:
        return math.sqrt(self.numeric.shape[0] * (self.clip**2 + len(self.categorical) + len(self.multi)))

    def _clipped(self, numeric: torch.Tensor) -> torch.Tensor:
        norm = numeric.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return numeric * (self.clip / norm).clamp(max=1.0)

    @staticmethod
    def _pooled_weights(ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != MISSING_INDEX).to(torch.float32)
        return mask / mask.sum(1, keepdim=True).clamp_min(1.0)

    @torch.no_grad()
    def fit(self, numeric: torch.Tensor, categorical: torch.Tensor, multi: list[torch.Tensor], labels: torch.Tensor, sigma: float) -> None:
        """Sum each audience's seed users' vectors (labels [n, A]) and add N(0, sigma^2) noise.

        The noise comes from OS entropy, not from the global generator that the run's logged
        ``seed`` fixes: with that seed anyone could redraw the noise and subtract it."""
        generator = entropy_generator(self.numeric.device) if sigma > 0 else None

        def noisy(t: torch.Tensor) -> torch.Tensor:
            if sigma <= 0:
                return t
            return t + sigma * torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)

        self.numeric.copy_(noisy(labels.t() @ self._clipped(numeric)))
        for j, table in enumerate(self.categorical):
            sums = torch.zeros_like(table).index_add_(1, categorical[:, j], labels.t())
            table.copy_(noisy(sums))
        for ids, table in zip(multi, self.multi):
            weights = self._pooled_weights(ids)  # [n, L]
            sums = torch.zeros_like(table)
            for pos in range(ids.shape[1]):
                sums.index_add_(1, ids[:, pos], labels.t() * weights[:, pos])
            table.copy_(noisy(sums))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        x = self._clipped(numeric)
        dot = x @ self.numeric.t()
        user_sq = (x * x).sum(1) + (categorical != MISSING_INDEX).sum(1).to(x.dtype)
        centroid_sq = (self.numeric**2).sum(1)
        for j, table in enumerate(self.categorical):
            dot = dot + table[:, categorical[:, j]].t()
            centroid_sq = centroid_sq + (table**2).sum(1)
        for ids, table in zip(multi, self.multi):
            weights = self._pooled_weights(ids)
            dot = dot + torch.einsum("bl,alb->ba", weights, table[:, ids.t()])
            user_sq = user_sq + (weights**2).sum(1)
            centroid_sq = centroid_sq + (table**2).sum(1)
        # A fixed scale turns cosines into usable logits; rankings do not depend on it.
        return 10.0 * dot / (user_sq.clamp_min(1e-12).sqrt()[:, None] * centroid_sq.clamp_min(1e-12).sqrt()[None, :])
