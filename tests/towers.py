"""User towers for tests/test_custom_tower.py, each built as ``model.user_tower._target_`` builds
them (``spec`` and ``output_dim`` given): one per route and one per refusal."""

from __future__ import annotations

import torch
from torch import nn

from examples.dcn_tower import CrossTower
from lookalike.data.features import FeatureSpec


class Gain(nn.Module):
    """A per-feature scale and shift held as raw parameters: no layer the fused clipping covers."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.shift = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class GainCrossTower(CrossTower):
    """The DCN tower with a :class:`Gain` on its output: the run takes the per-sample route."""

    def __init__(self, spec: FeatureSpec, output_dim: int, cross_layers: int = 1):
        super().__init__(spec, output_dim, cross_layers)
        self.gain = Gain(output_dim)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        return self.gain(super().forward(numeric, categorical, *multi))


class BatchNormTower(CrossTower):
    """Batch statistics on the inputs: each user's embedding depends on the rest of the batch."""

    def __init__(self, spec: FeatureSpec, output_dim: int):
        super().__init__(spec, output_dim, 1)
        self.norm = nn.BatchNorm1d(output_dim, affine=False)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(numeric, categorical, *multi))


class CenteredTower(CrossTower):
    """Batch mixing by hand (no BatchNorm to find): subtracts the batch mean."""

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        out = super().forward(numeric, categorical, *multi)
        return out - out.mean(0, keepdim=True)


class WideTower(CrossTower):
    """Returns one column too many."""

    def __init__(self, spec: FeatureSpec, output_dim: int):
        super().__init__(spec, output_dim + 1, 1)


class OutsideTower(CrossTower):
    """Uses a Gain's weight outside the Gain's forward: Opacus sees no per-example gradient for it."""

    def __init__(self, spec: FeatureSpec, output_dim: int):
        super().__init__(spec, output_dim, 1)
        self.gain = Gain(output_dim)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        return super().forward(numeric, categorical, *multi) * self.gain.scale
