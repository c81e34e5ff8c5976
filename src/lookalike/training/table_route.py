"""Which embedding tables train sparsely, and how.

A step reads a few thousand rows of a table; a publisher's sites, apps or content ids make tables
of millions. Dense training pays for every row at every step (Adam's dense update; under DP, noise
on every row too), so tables of at least ``trainer.sparse_tables_from`` rows take a sparse route:

- non-private: sparse gradients (``nn.Embedding(sparse=True)`` during training) and SparseAdam's
  row-wise update (row_adam.py) for those tables, the configured optimizer for everything else;
- DP-SGD (fused clipping, one process): SGD with lazy noise (dp_sgd/lazy_tables.py), exactly dense
  DP-SGD's distribution at the cost of the rows a step touches.

Smaller tables stay on the configured optimizer, whose utility the benchmarks measure. The sparse
tables take no weight decay (neither SparseAdam nor lazy noise has one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lookalike.training.row_adam import RowAdam

DENSE = "dense"


@dataclass
class TableRoute:
    tables: list[nn.Embedding] = field(default_factory=list)
    base_lr: float = 1e-3  # the configured optimizer's lr
    table_lr: float | None = None  # trainer.table_lr: DP tables' SGD lr; None derives it (dp_lr)

    def sizes(self) -> str:
        return " + ".join(f"{t.num_embeddings:,}" for t in self.tables)

    def dense_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        sparse = {id(t.weight) for t in self.tables}
        return [p for p in model.parameters() if id(p) not in sparse]

    def dp_lr(self, noise_std: float, batch: float) -> float:
        """The DP tables' SGD learning rate. Unset, it makes a row's per-step noise, lr sigma C / B
        per coordinate, as large as the configured lr: the step an adaptive optimizer (Adam) takes
        on a coordinate whose gradient is noise, which is most rows' at a large vocabulary."""
        if self.table_lr is not None:
            return float(self.table_lr)
        return self.base_lr * batch / noise_std if noise_std > 0 else self.base_lr

    def describe(self, private: bool) -> str:
        """What the run's MLflow params and log say about the route."""
        if not self.tables:
            return DENSE
        return f"{'lazy-noise SGD' if private else 'row-wise Adam'} on {len(self.tables)} table(s) of {self.sizes()} rows"


def table_route(model: nn.Module, min_rows: int | None, base_lr: float | None, table_lr: float | None) -> TableRoute:
    """The embedding tables of ``model`` with at least ``min_rows`` rows (None: none)."""
    tables = []
    if min_rows is not None:
        tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad and m.num_embeddings >= min_rows]
    return TableRoute(tables, float(base_lr) if base_lr else 1e-3, table_lr)


class SplitOptimizer:
    """Non-private training with sparse tables: row-wise Adam on the tables' sparse gradients, the
    configured optimizer on the rest, stepped and saved as one."""

    def __init__(self, dense: torch.optim.Optimizer, route: TableRoute):
        self.dense = dense
        self.route = route
        self.sparse = RowAdam([t.weight for t in route.tables], lr=route.base_lr)
        for table in route.tables:
            table.sparse = True  # F.embedding then returns a sparse gradient: the rows looked up only

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def step(self, closure=None) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "tables": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["tables"])

    def release(self) -> None:
        """The trained model's tables are ordinary (dense-gradient) embeddings again."""
        for table in self.route.tables:
            table.sparse = False
