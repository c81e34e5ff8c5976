"""A dataset of pre-built tensors that hands out whole batches, one gather per tensor.

``__getitems__`` lets the DataLoader (and Opacus' Poisson DPDataLoader, which keeps the
collate function) fetch a batch with one ``index_select`` per tensor instead of a Python call per
row. ``index_select``, not ``t[rows]``: advanced indexing took 0.32 ms to gather 1,024 rows of the
demo's 517-wide numeric matrix on the CPU, ``index_select`` 0.04 ms.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset


class TensorBatches(Dataset):
    def __init__(self, tensors: Sequence[torch.Tensor]):
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"tensors disagree on the number of rows: {sorted(sizes)}")
        self.tensors = list(tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices, dtype=torch.long, device=self.tensors[0].device)
        return tuple(t.index_select(0, rows) for t in self.tensors)


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Collate function for :class:`TensorBatches`: the batch is already stacked."""
    return batch
