"""Opacus' optimizer for pre-clipped gradient sums, without its per-step copies.

``DPOptimizerFastGradientClipping`` (what Opacus' ghost mode uses) deep-copies every gradient
into ``summed_grad`` at each step and builds each noise tensor as zeros + normal, then adds it
out of place: three full-size allocations per parameter per step, which on a small model cost
as much as the model's own backward pass. Here the clipped sum moves into ``summed_grad``
without a copy and each parameter's noise is drawn and added by one ``torch.normal`` call. The
arithmetic is the same: grad = (sum of clipped per-example gradients + N(0, (sigma C)^2)) /
expected batch size. In secure mode Opacus' own noise path runs unchanged.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from lookalike.parallel.world import all_reduce_mean_
from lookalike.training.dp_sgd.lazy_tables import LazyNoisyTables


class NoisySumOptimizer(DPOptimizerFastGradientClipping):
    # Big embedding tables trained with lazy noise (dp_sgd/lazy_tables.py): not among this
    # optimizer's parameters; each logical step hands them the same noise std and divisor.
    tables: LazyNoisyTables | None = None

    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        if not self.pre_step():
            return None
        self.after_noise()
        return self.original_optimizer.step()

    def after_noise(self) -> None:
        """Between the noised, scaled gradients and the update: the lazy tables' own step."""
        if self.tables is not None:
            divisor = self.expected_batch_size * self.accumulated_iterations if self.loss_reduction == "mean" else 1.0
            self.tables.step(self.noise_std(), divisor)

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad  # the fused clipping's sum, made under no_grad
            else:
                p.summed_grad.add_(p.grad)
            # p.grad now lives on in summed_grad: drop the name so that nothing (a
            # zero_grad(set_to_none=False)) can zero the accumulated sum through it.
            p.grad = None

    def noise_std(self) -> float:
        return getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm

    def add_noise(self) -> None:
        std = self.noise_std()
        if self.secure_mode and std > 0:
            return super().add_noise()
        sums = [p.summed_grad for p in self.params]
        _check_processed_flag(sums)
        noised = []
        for p, g in zip(self.params, sums):
            if std > 0:
                # The sum plus N(0, std^2) in one call: the draw and the add in ATen, not two
                # Python-level ops and a temporary per parameter. summed_grad takes the noised
                # sum too, so no un-noised sum outlives the step on a parameter.
                g = p.summed_grad = torch.normal(g, std, generator=self.generator)
            p.grad = g  # p's shape: summed_grad came from p.grad
            noised.append(g)
        _mark_as_processed(noised)


class DistributedNoisySumOptimizer(NoisySumOptimizer):
    """Under torchrun: each rank holds the clipped sum of its own examples; rank 0 alone adds
    the noise, then the sums are all-reduced (Opacus' DistributedDPOptimizerFastGradientClipping
    does the same). ``expected_batch_size`` is per rank, so sum / world / per-rank size is the
    global average."""

    def __init__(self, *args, world, **kwargs):
        super().__init__(*args, **kwargs)
        self.world = world

    def noise_std(self) -> float:
        return super().noise_std() if self.world.primary else 0.0

    def after_noise(self) -> None:
        # No lazy tables here (each rank reads other rows): every table is among self.params.
        for p in self.params:
            all_reduce_mean_(p.grad, self.world)
