"""Poisson-sampled logical batches cut into physical batches, straight from pre-built tensors.

The same sampling as Opacus' ``UniformWithReplacementSampler`` (every example independently with
probability q at every step, ``int(1 / q)`` steps per epoch, so the accountant's q and step count
match), without its per-step Python list of indices and the DataLoader round trip: the chosen
rows are drawn as geometric gaps (:func:`poisson_rows`), then one ``index_select`` per tensor. Like Opacus' BatchMemoryManager it
tells the DP optimizer which physical batches end a logical one, so noise is added once per
logical batch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def poisson_rows(n: int, q: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Each of ``n`` rows independently with probability ``q``, in order.

    Drawn as gaps between chosen rows, which are i.i.d. geometric(q) exactly when every row is an
    independent coin flip: about q n + a few draws instead of n uniforms (0.02 ms instead of
    0.2 ms at n = 47k, q = 1%). Geometric values count trials up to the first success, so the
    first chosen row is gap_1 - 1 and each next one gap_i further on.
    """
    if q >= 0.25:  # dense sampling: the plain mask is as cheap
        return (torch.rand(n, generator=generator, device=device) < q).nonzero().squeeze(1)
    expected = n * q
    draws = int(expected + 8 * (expected**0.5) + 16)
    positions = torch.empty(0, dtype=torch.long, device=device)
    last = -1
    while last < n:
        gaps = torch.empty(draws, device=device, dtype=torch.float64).geometric_(q, generator=generator).long()
        chunk = last + gaps.cumsum(0)
        positions = torch.cat([positions, chunk])
        last = int(chunk[-1])
    return positions[positions < n]


class PoissonBatches:
    def __init__(self, tensors: Sequence[torch.Tensor], sample_rate: float, max_physical_batch: int, optimizer, generator: torch.Generator | None = None):
        self.tensors = list(tensors)
        self.sample_rate = float(sample_rate)
        self.steps = int(1 / self.sample_rate)  # what Opacus' sampler takes: the accountant counts these
        self.max_physical_batch = int(max_physical_batch)
        self.optimizer = optimizer
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.tensors[0].shape[0]
        for _ in range(self.steps):
            rows = poisson_rows(n, self.sample_rate, self.generator, self.tensors[0].device)
            # An empty logical batch is still a step: zero gradient, noise added, accountant told.
            chunks = rows.split(self.max_physical_batch) if rows.numel() else (rows,)
            for i, chunk in enumerate(chunks):
                self.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
                yield tuple(t.index_select(0, chunk) for t in self.tensors)  # data/tensor_batches.py: why not t[chunk]
