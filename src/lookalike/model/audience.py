"""The audience tower: one learned embedding per seed audience, scored against user vectors.

The embedding table is used inside this module's own ``forward`` (never as ``self.weight`` in
another module's matmul, which would hide it from Opacus), and a registered grad sampler gives
Opacus exact per-sample gradients for it, including through the cosine normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn

EPS = 1e-12  # F.normalize's default clamp, repeated in the grad sampler


class AudienceTower(nn.Module):
    """logits[b, a] = similarity(user[b], audience[a]) + bias[a].

    ``similarity='dot'`` is the plain inner product; ``'cosine'`` multiplies the cosine by a
    learned scale ``exp(log_scale)`` so logits can still reach confident values.
    """

    def __init__(self, n_audiences: int, dim: int, similarity: str = "cosine", init_scale: float = 10.0):
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', not {similarity!r}")
        self.similarity = similarity
        # Weight initialisation, seeded on purpose (the run's `seed` makes it reproducible): the
        # global generator, named. Privacy noise never comes from it (distributed.entropy_generator).
        self.weight = nn.Parameter(torch.randn(n_audiences, dim, generator=torch.default_generator) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(n_audiences))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale))) if similarity == "cosine" else None

    def scale(self) -> nn.Parameter:
        """The cosine similarity's learned log scale (a dot-product tower has none)."""
        if self.log_scale is None:
            raise ValueError("a dot-product audience tower has no scale")
        return self.log_scale

    def forward(self, user: torch.Tensor) -> torch.Tensor:
        if self.similarity == "dot":
            return user @ self.weight.t() + self.bias
        cosine = F.normalize(user, dim=-1, eps=EPS) @ F.normalize(self.weight, dim=-1, eps=EPS).t()
        return self.scale().exp() * cosine + self.bias


@register_grad_sampler(AudienceTower)
def audience_grad_sample(layer: AudienceTower, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Per-sample gradients. ``backprops`` is dLoss_b/dlogits_b, shape [B, A]."""
    user = activations[0]
    grads = {}
    if layer.bias.requires_grad:
        grads[layer.bias] = backprops
    if layer.similarity == "dot":
        if layer.weight.requires_grad:
            grads[layer.weight] = torch.einsum("ba,bd->bad", backprops, user)
        return grads
    norm_w = layer.weight.norm(dim=-1, keepdim=True).clamp_min(EPS)
    unit_w = layer.weight / norm_w
    unit_u = user / user.norm(dim=-1, keepdim=True).clamp_min(EPS)
    scale = layer.scale().exp()
    if layer.weight.requires_grad:
        # d/dW of normalize(W) projects out the radial direction and divides by |W|.
        g_unit = scale * torch.einsum("ba,bd->bad", backprops, unit_u)
        radial = (g_unit * unit_w).sum(-1, keepdim=True) * unit_w
        grads[layer.weight] = (g_unit - radial) / norm_w
    if layer.scale().requires_grad:
        cosine = unit_u @ unit_w.t()
        grads[layer.scale()] = scale * (backprops * cosine).sum(-1)
    return grads


def _cosine_parts(layer: AudienceTower, user: torch.Tensor):
    unit_u = user / user.norm(dim=-1, keepdim=True).clamp_min(EPS)
    norm_w = layer.weight.norm(dim=-1).clamp_min(EPS)
    unit_w = layer.weight / norm_w.unsqueeze(-1)
    return unit_u, unit_w, norm_w, unit_u @ unit_w.t(), layer.scale().exp()


def audience_norm_squared(layer: AudienceTower, user: torch.Tensor, backprops: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """Per-example squared gradient norm in O(batch x audiences), without the [B, A, dim]
    per-example gradients: for cosine, d logit_ba / d w_a = (s / |w_a|) (u_b - cos_ba w_a) in
    unit vectors, whose squared length is (s / |w_a|)^2 (|u_b|^2 - cos_ba^2)."""
    # Part of every DP step's fixed cost: each term in as few whole-batch operations as it allows.
    squares = backprops.square()  # [B, A]
    g_sq = squares.sum(1)
    total = g_sq if layer.bias.requires_grad else torch.zeros_like(g_sq)
    if layer.similarity == "dot":
        if layer.weight.requires_grad:
            total = total + g_sq * torch.linalg.vector_norm(user, dim=1).square_()
        return total, None
    parts = _cosine_parts(layer, user)
    unit_u, _, norm_w, cosine, scale = parts
    if layer.weight.requires_grad:
        radial = torch.linalg.vector_norm(unit_u, dim=1, keepdim=True).square_() - cosine.square()
        total = total + (squares * radial) @ (scale / norm_w).square()
    if layer.scale().requires_grad:
        total = total + torch.linalg.vecdot(backprops, cosine).mul_(scale).square_()
    return total, parts


def audience_clipped_sum(layer: AudienceTower, user: torch.Tensor, backprops: torch.Tensor, coef: torch.Tensor, parts: tuple | None = None) -> dict:
    """Sum over examples of coef_b times each example's gradient, as matrix products."""
    weighted = backprops * coef.unsqueeze(1)
    sums = {layer.bias: weighted.sum(0)} if layer.bias.requires_grad else {}
    if layer.similarity == "dot":
        if layer.weight.requires_grad:
            sums[layer.weight] = weighted.t() @ user
        return sums
    unit_u, unit_w, norm_w, cosine, scale = parts if parts is not None else _cosine_parts(layer, user)
    if layer.weight.requires_grad:
        along = (weighted * cosine).sum(0)  # [A]
        sums[layer.weight] = (scale / norm_w).unsqueeze(1) * (weighted.t() @ unit_u - along.unsqueeze(1) * unit_w)
    if layer.scale().requires_grad:
        sums[layer.scale()] = scale * (weighted * cosine).sum()
    return sums
