"""Adam for embedding tables with sparse gradients, row by row (``torch.optim.SparseAdam``'s update).

Like SparseAdam, a row's moments and weights move only at steps whose batch looked it up
("lazy Adam"), with the bias correction of the table's step count. SparseAdam coalesces each
gradient (a sort) and masks both moment tables with it, about ten passes over the touched rows;
here the repeated lookups are summed without sorting (:func:`distinct_rows`), both moments of the
touched rows are gathered, updated and written back once, and the weights take one
``index_add_``: the touched rows are what a step costs, wherever they lie in a million-row table.
"""

from __future__ import annotations

import math

import torch


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"RowAdam needs lr > 0, eps > 0 and betas in [0, 1): lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.claims: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("RowAdam takes sparse gradients (nn.Embedding(sparse=True)); dense parameters belong to the dense optimizer")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    # Both moments of a row side by side: one gather and one scatter per step.
                    state["moments"] = torch.zeros(p.shape[0], 2, p.shape[1], dtype=p.dtype, device=p.device)
                state["step"] += 1
                # Scratch for distinct_rows, not state: load_state_dict would cast it to the weights' dtype.
                # Made once per table (setdefault would build a table-long tensor at every step).
                claims = self.claims.get(id(p))
                if claims is None:
                    claims = self.claims[id(p)] = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)
                rows, inverse = distinct_rows(claims, grad._indices()[0])
                values = grad._values()
                g = torch.zeros(rows.numel(), p.shape[1], dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
                moments = state["moments"].index_select(0, rows)
                exp_avg, exp_avg_sq = moments[:, 0], moments[:, 1]
                exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["moments"].index_copy_(0, rows, moments)
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                # SparseAdam's update, bias corrections folded into the step size as it does.
                update = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
                p.index_add_(0, rows, update.mul_(-step_size))  # no alpha: 4x slower on CPU
        return None


def distinct_rows(claims: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``ids`` and each position's index among them, without sorting
    (``torch.unique`` sorts): every position writes its index into its row's slot of ``claims``
    (as long as the table), and the one position per row that finds its own there represents it."""
    positions = torch.arange(ids.numel(), device=ids.device)
    claims.index_put_((ids,), positions)
    representative = claims.index_select(0, ids)  # index_select and masked_select: a third of t[i]'s time
    is_first = representative == positions
    slot = is_first.cumsum(0) - 1
    return ids.masked_select(is_first), slot.index_select(0, representative)
