"""Multi-process DP training under torchrun: one logical batch spread over ranks, noise added once.

    torchrun --nproc_per_node=2 -m lookalike.training.train experiment=demo

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address. Every rank reads its share
of the Parquet row groups; the vocabulary, standardisation, seed match counts and duplicate-id
check are combined across ranks (prepare.py, collective.py), so every rank builds the model a
single process would. Each rank Poisson-samples its own training examples at the global rate q
(one logical batch of the whole training set) with a generator of its own (inclusions must be
independent across ranks, so the ranks may not share a seed), clips its examples' gradients and
sums them; the sums are all-reduced and rank 0 alone adds the Gaussian noise. The released
gradient is then exactly the single-process one for the union of the ranks' samples, which is a
Poisson sample of the whole training set at rate q: the accounting (q, sigma, steps) is that of
a single process with the same global batch. Only rank 0 touches the ledger and MLflow; the
others wait for its go after the ledger reservation and stop if it is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def primary(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: LOCAL_RANK picks it."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device


def world_from_env(timeout_minutes: float = 120) -> World | None:
    """The torchrun world, with its process group started; None for a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def _flag_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_go(ok: bool, examples: int = 0) -> tuple[bool, int]:
    """Rank 0 says whether training goes ahead (its ledger reservation held) and the training-set
    size the sample rate is a batch of (a DP estimate drawn once, on rank 0); all ranks learn both."""
    flag = torch.tensor([1 if ok else 0, examples], dtype=torch.float64, device=_flag_device())
    dist.broadcast(flag, src=0)
    return bool(flag[0].item()), int(flag[1].item())


def broadcast_parameters(model: nn.Module) -> None:
    """Start every rank from rank 0's initial weights (they then stay equal: same updates)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


class StartSignal:
    """Rank 0 sends go (its reservation held, training starts) or stop (it failed before that);
    the other ranks wait for it once the data is prepared. A no-op for a single process.

    Until ``armed`` (set when every rank has prepared its data) there is nothing to send: a
    failure while preparing is raised on every rank at once (collective.py)."""

    def __init__(self, world: World | None):
        self.world = world
        self.sent = False
        self.armed = False

    def send(self, ok: bool, examples: int = 0) -> None:
        if self.world is not None and self.world.primary and self.armed and not self.sent:
            self.sent = True
            broadcast_go(ok, examples)

    def wait(self) -> tuple[bool, int]:
        return broadcast_go(False)  # the values are rank 0's


def all_reduce_mean_(tensor: torch.Tensor, world: World) -> None:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= world.size


def barrier() -> None:
    dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
