"""A DCN-v2 user tower (Wang et al., "DCN V2", WWW 2021) for ``model.user_tower``.

Run it on the demo data from the repository root (``PYTHONPATH=.`` puts this folder's package
ahead of the ``examples`` package that opacus installs)::

    lookalike-demo-data --output-dir data/demo
    PYTHONPATH=. lookalike-train experiment=demo model.user_tower._target_=examples.dcn_tower.CrossTower
    PYTHONPATH=. lookalike-train experiment=demo model.user_tower._target_=examples.dcn_tower.CrossTower \\
        +model.user_tower.cross_layers=3 +model.user_tower.embedding_dim=8

The run logs ``privacy.grad_sample_mode_used=fused``: every trainable layer here is an
``nn.Linear`` or ``nn.Embedding``, which the fused clipping covers. The MLflow model carries this
package (``code/examples``), so ``mlflow.pyfunc.load_model`` and ``lookalike-export`` rebuild the
tower without the repository on the path.

The input x_0 is the user's numeric inputs, one embedding per categorical column and the masked
mean of each list column's embeddings, concatenated. Each cross layer computes
x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (elementwise product): feature crosses of growing degree
with a residual path. A linear layer projects the last x_L to ``output_dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from lookalike.data.features import MISSING_INDEX, FeatureSpec


class CrossTower(nn.Module):
    """The contract of lookalike/model/custom.py: built with ``spec`` and ``output_dim`` (given by
    the package) and its own arguments; ``forward(numeric, categorical, *multi)`` returns
    [batch, output_dim]."""

    def __init__(self, spec: FeatureSpec, output_dim: int, cross_layers: int = 2, embedding_dim: int = 4):
        super().__init__()
        # One table per column: each nn.Embedding is used once per forward, as the fused clipping needs.
        self.categorical = nn.ModuleList(nn.Embedding(f.cardinality, embedding_dim) for f in spec.categorical)
        self.multi = nn.ModuleList(nn.Embedding(f.cardinality, embedding_dim, padding_idx=MISSING_INDEX) for f in spec.multi_categorical)
        width = spec.numeric_width + embedding_dim * (len(self.categorical) + len(self.multi))
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        self.project = nn.Linear(width, output_dim)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        parts = [numeric] + [table(categorical[:, j]) for j, table in enumerate(self.categorical)]
        for table, ids in zip(self.multi, multi):
            mask = (ids != MISSING_INDEX).unsqueeze(-1).to(numeric.dtype)
            parts.append((table(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        x0 = torch.cat(parts, dim=-1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.project(x)
