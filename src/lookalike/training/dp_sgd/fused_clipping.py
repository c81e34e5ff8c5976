"""Fused ghost clipping: the clipped sum of per-example gradients in one backward pass, without
ever materialising a per-example gradient of a large table.

A forward hook keeps the input and output of every layer whose parameters train. One
``autograd.grad`` call then gives dLoss_b/dOutput_b for all of them (example b's loss depends on
row b only, so the gradient of the summed loss is the per-example backprop). From those:

- ``nn.Linear`` (input a_b, backprop g_b): |dW_b|^2 = |a_b|^2 |g_b|^2 and |db_b|^2 = |g_b|^2.
- ``nn.Embedding`` (ids [B] or a bag [B, T], backprop G): example b's gradient puts G_bt on row
  id_bt, so |dE_b|^2 = sum over t, t' with id_bt = id_bt' of <G_bt, G_bt'> (repeated ids in one
  bag add up before squaring).
- ``AudienceTower``: closed forms in batch x audiences (model/audience.py).

The clip factor c_b = min(1, C / (|grad_b| + 1e-6)) (Opacus' formula) then reweights the same
backprops into the clipped sum directly: dW = (c g)^T a, dE = index_add(c G). Opacus' ghost mode
needs a second backward pass for that step and its hooks mode builds [B, vocab, dim] tensors for
embeddings; here neither happens. Noise, scaling and accounting stay with Opacus'
``DPOptimizerFastGradientClipping`` and accountant, which take exactly this clipped sum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lookalike.errors import ConfigError
from lookalike.model.audience import (
    AudienceTower,
    audience_clipped_sum,
    audience_norm_squared,
)
from lookalike.training.dp_sgd.lazy_tables import LazyNoisyTables
from lookalike.training.dp_sgd.route import uncovered_layer

STABILITY = 1e-6  # Opacus adds this to the norm before dividing


class FusedClipping:
    """Attach to a plain module; call :meth:`backward` with per-example losses instead of
    ``loss.backward()``: it leaves the clipped (not yet noised) gradient sum in ``p.grad``."""

    def __init__(self, model: nn.Module, max_grad_norm: float, lazy: LazyNoisyTables | None = None):
        self.max_grad_norm = float(max_grad_norm)
        self.records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self.handles = []
        # Lazy-noise tables get their clipped sums sparse (lazy.add), never a dense p.grad.
        self.lazy = lazy
        skip = {id(p) for p in lazy.parameters()} if lazy is not None else set()
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
        uncovered = uncovered_layer(model)
        if uncovered is not None:
            raise ConfigError("privacy.grad_sample_mode", f"fused clipping does not cover {uncovered}; use grad_sample_mode=hooks for this model")
        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_hook(self._keep))

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and module.training:
            self.records.append((module, inputs[0], output))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.records = []

    def backward(self, example_loss: torch.Tensor) -> torch.Tensor:
        """Accumulate the clipped gradient sum of ``example_loss`` ([B]) into ``p.grad``; return
        the per-example gradient norms (before clipping)."""
        records, self.records = self.records, []
        modules = [r[0] for r in records]
        if len(set(map(id, modules))) != len(modules):
            # A layer used twice in one forward gets one gradient per example from both uses,
            # whose norm is not the sum of the two; refuse rather than under-clip.
            raise ConfigError("privacy.grad_sample_mode", "fused clipping needs each layer used once per forward; use hooks")
        if example_loss.shape[0] == 0 or not records:
            self._fill_missing()  # an empty Poisson batch: a zero sum, still noised by the optimizer
            return example_loss.detach()
        grads = torch.autograd.grad(example_loss.sum(), [r[2] for r in records], allow_unused=True)
        # Everything below is arithmetic on saved inputs and backprops: no graph. The inputs of
        # most layers require grad (they come out of the layer below), and building autograd's
        # graph for each product, as the plain code would, costs more than the products.
        with torch.no_grad():
            backprops = [torch.zeros_like(r[2]) if g is None else g for r, g in zip(records, grads)]
            squared: torch.Tensor | None = None
            saved = []  # what a layer's norm computed and its clipped sum reuses
            for (module, inputs, _), g in zip(records, backprops):
                norm_sq, kept = _norm_squared(module, inputs, g)
                squared = norm_sq if squared is None else squared + norm_sq
                saved.append(kept)
            assert squared is not None  # records is not empty
            norms = squared.sqrt()
            coef = (self.max_grad_norm / (norms + STABILITY)).clamp(max=1.0)
            for (module, inputs, _), g, kept in zip(records, backprops, saved):
                _add_clipped(module, inputs, g, coef, kept, self.lazy)
        self._fill_missing()
        return norms

    def _fill_missing(self) -> None:
        # Opacus' optimizer expects a gradient on every parameter, unused ones included.
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)


def _norm_squared(module: nn.Module, inputs: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Per-example squared gradient norm of ``module``'s trainable parameters."""
    if isinstance(module, nn.Linear):
        if inputs.dim() != 2:
            raise ConfigError("privacy.grad_sample_mode", "fused clipping covers nn.Linear on [batch, features] inputs only; use hooks")
        # Squared row norms as one reduction each, no [batch, features] temporary.
        g_sq = torch.linalg.vector_norm(g, dim=1).square_()
        bias = module.bias is not None and module.bias.requires_grad
        if not module.weight.requires_grad:
            return g_sq if bias else torch.zeros_like(g_sq), None
        # |dW_b|^2 + |db_b|^2 = (|a_b|^2 + 1) |g_b|^2
        return torch.linalg.vector_norm(inputs, dim=1).square_().add_(float(bias)).mul_(g_sq), None
    if isinstance(module, nn.Embedding):
        g = _mask_padding(module, inputs, g)  # kept: the clipped sum uses the same masked backprops
        if not module.weight.requires_grad:
            return torch.zeros_like(g[:, 0] if g.dim() == 2 else g[:, 0, 0]), g
        if inputs.dim() == 1:
            return torch.linalg.vector_norm(g, dim=1).square_(), g
        if inputs.shape[1] > 1 and bool((inputs[:, 1:] > inputs[:, :-1]).all()):
            # Ids rising along every row (the shared categorical table's columns, each shifted
            # into its own range) are all distinct: no two positions share a row, so the norm is
            # the sum of the positions' own, without the [B, T, T] products. Checked, not assumed.
            return torch.linalg.vector_norm(g, dim=(1, 2)).square_(), g
        # <G_bt, G_bt'> for every pair of positions, zeroed in place where the two hold different
        # ids: a third of the time of multiplying by a float mask of the same ones on bags of 16.
        products = torch.bmm(g, g.transpose(1, 2))  # [B, T, T]
        return products.masked_fill_(inputs.unsqueeze(2) != inputs.unsqueeze(1), 0.0).sum((1, 2)), g
    assert isinstance(module, AudienceTower)
    return audience_norm_squared(module, inputs, g)


def _add_clipped(module: nn.Module, inputs: torch.Tensor, g: torch.Tensor, coef: torch.Tensor, kept: Any, lazy: LazyNoisyTables | None = None) -> None:
    if isinstance(module, nn.Linear):
        weighted = g * coef.unsqueeze(1)
        if module.weight.requires_grad:
            _accumulate(module.weight, weighted.t() @ inputs)
        if module.bias is not None and module.bias.requires_grad:
            _accumulate(module.bias, weighted.sum(0))
    elif isinstance(module, nn.Embedding):
        if module.weight.requires_grad:
            g = kept * coef.view(-1, *([1] * (g.dim() - 1)))
            if lazy is not None and module in lazy:
                lazy.add(module, inputs, g)  # the rows a batch touches, not the whole table
            else:
                table = torch.zeros_like(module.weight).index_add_(0, inputs.reshape(-1), g.reshape(-1, g.shape[-1]))
                _accumulate(module.weight, table)
    else:
        assert isinstance(module, AudienceTower)
        for param, total in audience_clipped_sum(module, inputs, g, coef, kept).items():
            _accumulate(param, total)


def _mask_padding(module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The padding row of an embedding never trains: its positions carry no gradient."""
    if module.padding_idx is None:
        return g
    return g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    # Physical batches of one logical batch add up; the optimizer clears p.grad after each step.
    if param.grad is None:
        param.grad = grad  # made under no_grad: nothing to detach
    else:
        param.grad.add_(grad)
