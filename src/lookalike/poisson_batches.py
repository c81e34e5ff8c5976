"""Poisson-sampled logical batches cut into physical batches, straight from pre-built tensors.

The same sampling as Opacus' ``UniformWithReplacementSampler`` (every example independently with
probability q at every step, ``int(1 / q)`` steps per epoch, so the accountant's q and step count
match), without its per-step Python list of indices and the DataLoader round trip: one
``rand < q`` mask, one ``nonzero`` and one gather per tensor. Like Opacus' BatchMemoryManager it
tells the DP optimizer which physical batches end a logical one, so noise is added once per
logical batch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


class PoissonBatches:
    def __init__(self, tensors: Sequence[torch.Tensor], sample_rate: float, max_physical_batch: int, optimizer,
                 generator: torch.Generator | None = None):
        self.tensors = list(tensors)
        self.sample_rate = float(sample_rate)
        self.steps = int(1 / self.sample_rate)  # what Opacus' sampler takes: the accountant counts these
        self.max_physical_batch = int(max_physical_batch)
        self.optimizer = optimizer
        self.generator = generator
        self.dataset = self.tensors[0]  # len(loader.dataset): the number of examples, as on a DataLoader

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.tensors[0].shape[0]
        for _ in range(self.steps):
            rows = (torch.rand(n, generator=self.generator, device=self.tensors[0].device) < self.sample_rate).nonzero().squeeze(1)
            # An empty logical batch is still a step: zero gradient, noise added, accountant told.
            chunks = rows.split(self.max_physical_batch) if rows.numel() else (rows,)
            for i, chunk in enumerate(chunks):
                self.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
                yield tuple(t[chunk] for t in self.tensors)
