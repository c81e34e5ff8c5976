"""Lazy noise for DP-SGD's large embedding tables (LazyDP, Lim et al., ASPLOS 2024).

Dense DP-SGD adds fresh Gaussian noise to every row of every table at every step, though a batch
reads a few thousand rows of a million. With plain SGD on a table, a row no example touched
moves by pure noise, -lr N(0, (sigma C)^2) / B per step, and nothing reads it in between: its k
pending steps sum to one Gaussian of the summed variance. So each row keeps the cumulative noise
variance it has received (``synced``) and the table keeps the total released so far; a row is
brought up to date, with one draw of the difference, when a forward pass reads it or when the
whole table is flushed: before every checkpoint (each epoch's end) and when training ends.
Between flushes a touched row holds its clipped gradient without that step's noise, and which rows
owe what tells which values the last batches held: neither may leave the process, so a checkpoint
(which the operator can read) is only ever written flushed, owing nothing, and a resume starts
from nothing owed.

The released weights have exactly the distribution of dense DP-SGD with the same SGD step: every
row holds the same sum of independent Gaussians, drawn later but before anything reads it, and a
touched row still gets its clipped gradient sum in the step that computed it. Accounting does not
change (the same noise, the same steps). The update must be linear in the gradient: SGD without
momentum or weight decay, which is why the tables have their own optimizer here and Adam keeps the
dense layers (tests/test_lazy_noise.py compares against dense DP-SGD over many runs).
"""

from __future__ import annotations

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from lookalike.training.row_adam import distinct_rows


class LazyNoisyTables:
    """The tables trained with lazy noise: SGD at ``lr``, clipped sums handed in by the fused
    clipping (:meth:`add`), one :meth:`step` per logical batch from the DP optimizer."""

    def __init__(self, tables: list[nn.Embedding], lr: float, generator: torch.Generator | None, secure_mode: bool = False):
        self.tables = list(tables)
        self.lr = float(lr)
        self.generator = generator
        self.secure_mode = bool(secure_mode)
        self.released = 0.0  # cumulative noise variance every row has received so far (float, exact sum)
        # Per row, the part of ``released`` already added to its weights (float64: a long run's sums).
        self.synced = [torch.zeros(t.num_embeddings, dtype=torch.float64, device=t.weight.device) for t in self.tables]
        self.pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {id(t): [] for t in self.tables}
        self.claims = [torch.zeros(t.num_embeddings, dtype=torch.long, device=t.weight.device) for t in self.tables]  # scratch for _distinct
        self.handles = [t.register_forward_pre_hook(self._before_read) for t in self.tables]

    def __contains__(self, module: object) -> bool:
        return id(module) in self.pending

    def parameters(self) -> list[torch.Tensor]:
        return [t.weight for t in self.tables]

    def _before_read(self, module: nn.Embedding, inputs: tuple) -> None:
        self.materialize(module, inputs[0].reshape(-1))

    @torch.no_grad()
    def materialize(self, table: nn.Embedding, ids: torch.Tensor, distinct: bool = False) -> None:
        """Add to rows ``ids`` the noise released since each was last brought up to date."""
        at = self.tables.index(table)
        rows = ids if distinct else self._distinct(at, ids)
        owed = (self.released - self.synced[at].index_select(0, rows)).clamp_min(0.0)
        if rows.numel() == 0 or not bool((owed > 0).any()):
            return
        weight = table.weight
        shape = (rows.numel(), weight.shape[1])
        if self.secure_mode:
            unit = _generate_noise(1.0, torch.empty(shape, device=weight.device, dtype=weight.dtype), self.generator, True)
        else:
            unit = torch.empty(shape, device=weight.device, dtype=weight.dtype).normal_(generator=self.generator)
        weight.index_add_(0, rows, unit.mul_(owed.sqrt().to(weight.dtype).unsqueeze(1)))
        self.synced[at].index_fill_(0, rows, self.released)

    def _distinct(self, at: int, ids: torch.Tensor) -> torch.Tensor:
        """The distinct values of ``ids``, without sorting (training/row_adam.py)."""
        return distinct_rows(self.claims[at], ids)[0]

    def flush(self) -> None:
        """Bring every row up to date: what a checkpoint, an evaluation or the saved model reads."""
        for table in self.tables:
            self.materialize(table, torch.arange(table.num_embeddings, device=table.weight.device), distinct=True)

    def add(self, table: nn.Module, ids: torch.Tensor, clipped: torch.Tensor) -> None:
        """One physical batch's clipped per-position gradients (rows ``ids``), kept sparse."""
        self.pending[id(table)].append((ids.reshape(-1), clipped.reshape(-1, clipped.shape[-1]).detach()))

    @torch.no_grad()
    def step(self, noise_std: float, divisor: float) -> None:
        """The SGD step of one logical batch: grad = (clipped sum + N(0, noise_std^2)) / divisor.
        The clipped sum lands on the rows it touches now; the noise, on every row, is owed."""
        for table in self.tables:
            for ids, clipped in self.pending[id(table)]:
                # Scaled first: index_add_ with an alpha runs about 4x slower on CPU.
                table.weight.index_add_(0, ids, clipped.mul_(-self.lr / divisor))
            self.pending[id(table)] = []
        self.released += (self.lr * noise_std / divisor) ** 2

    def detach(self) -> None:
        """Flush, and stop intercepting reads (the trained model is a plain module again)."""
        self.flush()
        for handle in self.handles:
            handle.remove()
        self.handles = []
