"""User tower and the two-tower model.

Multi-categorical features are pooled with ``nn.Embedding`` and a masked mean rather than
``nn.EmbeddingBag``: Opacus computes EmbeddingBag per-sample gradients in a Python loop.
All single categoricals share one table (each column's ids shifted by an offset): one lookup
and, under DP, one clipping record per step instead of one per column.
No BatchNorm anywhere: it mixes examples and breaks per-example sensitivity.
"""

from __future__ import annotations

import torch
from torch import nn

from lookalike.data.features import MISSING_INDEX, FeatureSpec
from lookalike.model.audience import AudienceTower
from lookalike.model.config import ModelConfig
from lookalike.model.custom import build_user_tower
from lookalike.model.projected_inputs import ProjectedInputs


class UserTower(nn.Module):
    """Embeds one user's features into an ``output_dim`` vector."""

    offsets: torch.Tensor  # each categorical column's first row in the shared table (a buffer)

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig):
        super().__init__()
        # model.input_projection: the publisher's principal components replace the embeddings.
        self.projected = ProjectedInputs(spec, cfg.input_projection) if cfg.input_projection else None
        sizes = [f.cardinality for f in spec.categorical] if self.projected is None else []
        self.n_categorical = len(sizes)
        # Row offset of each column's vocabulary in the shared table (a buffer: saved with the model).
        self.register_buffer("offsets", torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0), persistent=False)
        self.categorical = nn.Embedding(sum(sizes), cfg.embedding_dim) if sizes else None
        multi = spec.multi_categorical if self.projected is None else []
        self.multi = nn.ModuleList(nn.Embedding(f.cardinality, cfg.embedding_dim) for f in multi)
        width = cfg.input_projection or spec.numeric_width + cfg.embedding_dim * (self.n_categorical + len(self.multi))
        layers: list[nn.Module] = []
        for hidden in cfg.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = hidden
        layers.append(nn.Linear(width, cfg.output_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        if self.projected is not None:
            return self.mlp(self.projected(numeric, categorical, *multi))
        parts = [numeric]
        if self.categorical is not None:
            parts.append(self.categorical(categorical + self.offsets).flatten(1))
        for emb, ids in zip(self.multi, multi):
            ids = trim_padding(ids)
            mask = (ids != MISSING_INDEX).unsqueeze(-1).to(numeric.dtype)
            # Masked mean: padding contributes neither to the sum nor to the count.
            parts.append((emb(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return self.mlp(torch.cat(parts, dim=-1))


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop trailing bag positions that are padding for every user in the batch (most lists are
    far shorter than ``max_length``); the masked mean is unchanged."""
    used = (ids != MISSING_INDEX).any(0).nonzero()
    return ids[:, : int(used.max()) + 1] if used.numel() else ids[:, :1]


class TwoTower(nn.Module):
    """Scores users against every audience: ``forward(...) -> logits [batch, n_audiences]``."""

    def __init__(self, spec: FeatureSpec, n_audiences: int, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # model.user_tower: your own tower (model/custom.py) in place of the built-in one.
        self.user_tower = build_user_tower(spec, cfg.user_tower or {}, cfg.output_dim) if cfg.custom_tower else UserTower(spec, cfg)
        self.audience_tower = AudienceTower(n_audiences, cfg.output_dim, cfg.similarity)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        return self.audience_tower(self.user_tower(numeric, categorical, *multi))
