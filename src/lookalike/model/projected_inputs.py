"""The user tower's fixed input projection (``model.input_projection``): a user's dense input
vector, centred and multiplied by the publisher's whitened principal directions
(data/principal_inputs.py). Buffers, not parameters: nothing here trains, so DP-SGD puts no noise
on it and Opacus sees no weights to clip; the bundle saves it with the rest of the state."""

from __future__ import annotations

import torch
from torch import nn

from lookalike.data.features import MISSING_INDEX, FeatureSpec
from lookalike.data.principal_inputs import InputProjection, dense_width


class ProjectedInputs(nn.Module):
    mean: torch.Tensor  # [width]
    matrix: torch.Tensor  # [width, k]
    offsets: torch.Tensor  # each categorical and list column's first position in the dense vector

    def __init__(self, spec: FeatureSpec, k: int):
        super().__init__()
        width = dense_width(spec)
        self.numeric_width = spec.numeric_width
        sizes = [f.cardinality for f in spec.categorical + spec.multi_categorical]
        starts = [spec.numeric_width + sum(sizes[:i]) for i in range(len(sizes))]
        self.n_categorical = len(spec.categorical)
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long), persistent=False)
        # Filled by ``fill`` at training time, from the bundle's state at load time.
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("matrix", torch.zeros(width, k))

    @torch.no_grad()
    def fill(self, projection: InputProjection) -> None:
        """Take the publisher's fitted projection (its shape must match this layer's)."""
        self.mean.copy_(torch.from_numpy(projection.mean))
        self.matrix.copy_(torch.from_numpy(projection.matrix))

    def dense(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        """The dense vector of data/principal_inputs.py's ``dense_inputs``, in torch."""
        out = torch.zeros(numeric.shape[0], self.mean.shape[0], dtype=self.mean.dtype, device=numeric.device)
        out[:, : self.numeric_width] = numeric
        if self.n_categorical:
            out.scatter_(1, categorical + self.offsets[: self.n_categorical], 1.0)
        for ids, start in zip(multi, self.offsets[self.n_categorical :]):
            present = (ids != MISSING_INDEX).to(out.dtype)
            weight = present / present.sum(1, keepdim=True).clamp_min(1.0)
            out.scatter_add_(1, ids + start, weight)
        return out

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, *multi: torch.Tensor) -> torch.Tensor:
        return (self.dense(numeric, categorical, *multi) - self.mean) @ self.matrix
