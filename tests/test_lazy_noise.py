"""Lazy noise on embedding tables releases exactly what dense DP-SGD does.

A tiny model (a 6-row table under a linear layer) takes the same four batches many times over,
once with the table noised densely at every step (Opacus' optimizer, plain SGD on everything) and
once with lazy noise (the table's noise owed until a row is read, then flushed). Rows 4 and 5 are
never read: their final weights are the initial ones plus pure noise of exactly 4 steps' variance.
Rows 0 to 3 are read at different steps, some several times in one batch (row 3 three times after
three steps owed), so their noise feeds back into later gradients through the linear layer: the two
routes must agree in every weight's mean and variance over the runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.training.dp_sgd.fused_clipping import FusedClipping
from lookalike.training.dp_sgd.lazy_tables import LazyNoisyTables
from lookalike.training.dp_sgd.noisy_optimizer import NoisySumOptimizer

ROWS, DIM, LR, SIGMA, CLIP, BATCH = 6, 3, 0.5, 1.2, 1.0, 4.0
BATCHES = [torch.tensor([0, 1, 1, 0]), torch.tensor([2, 0]), torch.tensor([1, 2, 2]), torch.tensor([3, 3, 3, 0])]
RUNS = 1200


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.table = nn.Embedding(ROWS, DIM)
        self.head = nn.Linear(DIM, 1)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(ROWS, DIM, generator=generator))
            self.head.weight.copy_(torch.randn(1, DIM, generator=generator))
            self.head.bias.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids)).squeeze(1)


def train_once(lazy: bool, generator: torch.Generator) -> torch.Tensor:
    model = Tiny()
    params = [model.head.weight, model.head.bias] if lazy else list(model.parameters())
    optimizer = NoisySumOptimizer(
        torch.optim.SGD(params, lr=LR), noise_multiplier=SIGMA, max_grad_norm=CLIP, expected_batch_size=int(BATCH), loss_reduction="mean", generator=generator
    )
    tables = LazyNoisyTables([model.table], LR, generator) if lazy else None
    optimizer.tables = tables
    clipping = FusedClipping(model, CLIP, tables)
    for ids in BATCHES:
        optimizer.zero_grad(set_to_none=True)
        labels = (ids % 2).float()
        logits = model(ids)
        clipping.backward(F.softplus(logits) - logits * labels)  # BCE with logits, per example
        optimizer.step()
    if tables is not None:
        tables.detach()
    return torch.cat([model.table.weight.detach().reshape(-1), model.head.weight.detach().reshape(-1)])


def weights(lazy: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11 if lazy else 12)
    return torch.stack([train_once(lazy, generator) for _ in range(RUNS)])


def test_lazy_noise_has_dense_dp_sgds_distribution():
    dense, lazy = weights(False), weights(True)
    start = Tiny().table.weight.detach()

    # Never-read rows: initial value plus 4 steps of N(0, (lr sigma C / B)^2) each, nothing else.
    step_var = (LR * SIGMA * CLIP / BATCH) ** 2
    unread = slice(4 * DIM, ROWS * DIM)
    for name, runs in (("dense", dense), ("lazy", lazy)):
        var = runs[:, unread].var(0)
        # A sample variance over RUNS draws has relative sd sqrt(2 / RUNS), about 3.7%: 5 sd.
        assert (var / (len(BATCHES) * step_var) - 1).abs().max() < 5 * math.sqrt(2 / RUNS), f"{name}: {var}"
        mean_error = (runs[:, unread].mean(0) - start[4:].reshape(-1)).abs().max()
        assert mean_error < 5 * math.sqrt(len(BATCHES) * step_var / RUNS), name

    # Every weight, read rows and the head included: means within 5 standard errors, variances
    # within 5 sd of their ratio's sampling error.
    standard_error = ((dense.var(0) + lazy.var(0)) / RUNS).sqrt()
    assert ((dense.mean(0) - lazy.mean(0)).abs() / standard_error).max() < 5
    log_ratio = (lazy.var(0) / dense.var(0)).log()
    assert log_ratio.abs().max() < 5 * math.sqrt(4 / RUNS), log_ratio


def test_a_read_row_carries_every_step_it_missed():
    """Row 5 is read once after 3 untouched steps: the read sees 3 steps' noise, and the rows it
    was read with are not charged it twice."""
    model = nn.Embedding(ROWS, DIM)
    start = model.weight.detach().clone()
    tables = LazyNoisyTables([model], lr=1.0, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        tables.step(noise_std=2.0, divisor=1.0)
    assert torch.equal(model.weight.detach(), start)  # nothing drawn until a read
    model(torch.tensor([5, 5]))
    assert tables.synced[0][5] == 12.0 and tables.synced[0][:5].eq(0).all()
    moved = model.weight.detach() - start
    assert moved[5].abs().sum() > 0 and moved[:5].eq(0).all()
    tables.flush()
    assert tables.synced[0].eq(12.0).all()


def test_rows_read_in_one_batch_are_brought_up_to_date_once():
    model = nn.Embedding(100, 2)
    tables = LazyNoisyTables([model], lr=1.0, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        ids = torch.randint(0, 100, (int(torch.randint(1, 300, (), generator=generator)),), generator=generator)
        assert sorted(tables._distinct(0, ids).tolist()) == sorted(set(ids.tolist()))
