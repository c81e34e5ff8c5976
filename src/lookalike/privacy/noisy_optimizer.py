"""Opacus' optimizer for pre-clipped gradient sums, without its per-step copies.

``DPOptimizerFastGradientClipping`` (what Opacus' ghost mode uses) deep-copies every gradient
into ``summed_grad`` at each step and builds each noise tensor as zeros + normal, then adds it
out of place: three full-size allocations per parameter per step, which on a small model cost
as much as the model's own backward pass. Here the clipped sum moves into ``summed_grad``
without a copy and the noise is drawn once and added in place. The arithmetic is the same:
grad = (sum of clipped per-example gradients + N(0, (sigma C)^2)) / expected batch size. In
secure mode Opacus' own noise path runs unchanged.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


class NoisySumOptimizer(DPOptimizerFastGradientClipping):
    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad.detach()
            else:
                p.summed_grad.add_(p.grad)
            # p.grad now lives on in summed_grad: drop the name so that nothing (a
            # zero_grad(set_to_none=False)) can zero the accumulated sum through it.
            p.grad = None

    def add_noise(self) -> None:
        if self.secure_mode:
            return super().add_noise()
        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
        sums = [p.summed_grad for p in self.params]
        _check_processed_flag(sums)
        # One draw for every parameter (per-call overhead dominates on small layers), split into
        # per-parameter pieces; each parameter's noise is still i.i.d. N(0, std^2).
        if std > 0:
            flat = torch.empty(sum(g.numel() for g in sums), device=sums[0].device, dtype=sums[0].dtype)
            flat.normal_(0.0, std, generator=self.generator)
            for g, noise in zip(sums, flat.split([g.numel() for g in sums])):
                g.add_(noise.view_as(g))
        for p, g in zip(self.params, sums):
            p.grad = g.view_as(p)
        _mark_as_processed(sums)


class DistributedNoisySumOptimizer(NoisySumOptimizer):
    """Under torchrun: each rank holds the clipped sum of its own examples; rank 0 alone adds
    the noise, then the sums are all-reduced (Opacus' DistributedDPOptimizerFastGradientClipping
    does the same). ``expected_batch_size`` is per rank, so sum / world / per-rank size is the
    global average."""

    def __init__(self, *args, world, **kwargs):
        super().__init__(*args, **kwargs)
        self.world = world

    def add_noise(self) -> None:
        if self.world.primary:
            return super().add_noise()
        for p in self.params:
            p.grad = p.summed_grad.view_as(p)
        _mark_as_processed([p.summed_grad for p in self.params])

    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        if not self.pre_step():
            return None
        from lookalike.distributed import all_reduce_mean_

        for p in self.params:
            all_reduce_mean_(p.grad, self.world)
        return self.original_optimizer.step()
