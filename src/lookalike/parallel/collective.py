"""Steps that every rank runs on its own share of the data, with the results combined.

Under torchrun each rank prepares only its Parquet row groups, and the statistics that must be
global (vocabularies, standardisation, seed match counts, duplicate ids) are combined here. One
rule keeps the ranks from hanging: every step is run on all ranks and its failure is agreed on,
so that when one rank's data is bad every rank raises the same one-line error instead of the
others waiting forever in the next collective.

:class:`Collective` is the single-process case (every combination is the identity);
:class:`GroupCollective` is torch.distributed's object collectives (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np
import pyarrow as pa
import torch.distributed as dist

from lookalike.errors import LookalikeError

T = TypeVar("T")
L = TypeVar("L")


class Collective:
    """One process: it holds all the data; every step's result is the whole result."""

    rank, size = 0, 1

    @property
    def primary(self) -> bool:
        return self.rank == 0

    def each(self, step: Callable[[], T]) -> list[T]:
        """Run ``step`` on every rank; every rank gets the list of all ranks' results."""
        return [step()]

    def exchange(self, step: Callable[[], tuple[L, T]]) -> tuple[L, list[T]]:
        """Run ``step`` on every rank: it keeps the first part of its result, and every rank
        gets the list of all ranks' second parts."""
        kept, shared = self._split(step)
        parts = self.each(shared)
        return kept[0], parts

    def collect(self, step: Callable[[], tuple[L, T]]) -> tuple[L, list[T] | None]:
        """As :meth:`exchange`, but only rank 0 gets the second parts (the others None)."""
        kept, shared = self._split(step)
        parts = self._to_primary(shared)
        return kept[0], parts

    def on_primary(self, step: Callable[[], T]) -> T | None:
        """Run ``step`` on rank 0 alone; the others learn only whether it failed."""
        return step()

    def route(self, buckets: np.ndarray, values: pa.Array) -> pa.Array:
        """Send ``values[i]`` to rank ``buckets[i]``; return what this rank received."""
        return values

    def total(self, step: Callable[[], tuple[L, dict[str, int]]]) -> tuple[L, dict[str, int]]:
        """As :meth:`exchange`, with counts summed over the ranks."""
        mine, parts = self.exchange(step)
        return mine, {key: sum(part[key] for part in parts) for key in parts[0]}

    def _to_primary(self, step: Callable[[], T]) -> list[T] | None:
        return [step()]

    @staticmethod
    def _split(step: Callable[[], tuple[L, T]]) -> tuple[list[L], Callable[[], T]]:
        """``step`` as a step returning only its shared part; the kept part lands in the list
        (filled once the collective has run it)."""
        kept: list[L] = []

        def shared() -> T:
            mine, result = step()
            kept.append(mine)
            return result

        return kept, shared


class GroupCollective(Collective):
    """The torchrun process group (already initialised by distributed.world_from_env)."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def each(self, step: Callable[[], T]) -> list[T]:
        result = self._checked(step)
        results: list[Any] = [None] * self.size
        dist.all_gather_object(results, result)
        return results

    def _to_primary(self, step: Callable[[], T]) -> list[T] | None:
        result = self._checked(step)
        results: list[Any] | None = [None] * self.size if self.primary else None
        dist.gather_object(result, results, dst=0)
        return results

    def on_primary(self, step: Callable[[], T]) -> T | None:
        return self._checked(step if self.primary else lambda: None)

    def route(self, buckets: np.ndarray, values: pa.Array) -> pa.Array:
        # One gather per destination: each rank holds only its own bucket, never everything.
        outgoing = self._checked(lambda: [values.filter(pa.array(buckets == dst)) for dst in range(self.size)])
        received = None
        for dst, part in enumerate(outgoing):
            parts: list[Any] | None = [None] * self.size if self.rank == dst else None
            dist.gather_object(part, parts, dst=dst)
            if parts is not None:
                received = pa.concat_arrays([p for p in parts if len(p)] or [part])
        assert received is not None
        return received

    def _checked(self, step: Callable[[], T]) -> T:
        """Run ``step``; raise on every rank if it failed on any."""
        result: T | None = None
        failure: str | None = None
        error: BaseException | None = None
        try:
            result = step()
        except LookalikeError as exc:
            failure, error = str(exc), exc
        except Exception as exc:  # a bug: the other ranks must still stop, not hang
            failure, error = f"rank {self.rank} failed ({type(exc).__name__}: {exc}); its traceback says where", exc
        failures: list[Any] = [None] * self.size
        dist.all_gather_object(failures, failure)
        if error is not None:
            raise error
        first = next((f for f in failures if f is not None), None)
        if first is not None:
            raise LookalikeError(first)
        return result  # type: ignore[return-value]


def collective_for(world: Any) -> Collective:
    """The collective of a torchrun ``World``, or the single-process one for None."""
    return Collective() if world is None else GroupCollective(world.rank, world.size)
