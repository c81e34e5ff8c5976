"""One streaming pass over the publisher data: score every user for every exported audience
(:func:`score_batches`, seed-free), then tally the scores against the seed (:class:`Tally`).

Memory stays flat in the population: per audience only the segment candidates (O(largest
bin)), the best users of the whole population (O(largest bin), with ids: the report ranks by
score, then id) and the held-out seed users' scores and ids are kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from lookalike.data.encode import encode
from lookalike.data.features import FeatureSpec
from lookalike.data.matching import split_draws
from lookalike.data.row_group_shares import row_groups
from lookalike.export.topk import TopK
from lookalike.privacy.mechanisms import randomized_exclusion

SEED_FIRST = 2.0  # added to a probability in [0, 1] so included seed users rank before everyone

ENCODE_ROWS = 8192  # rows encoded and scored at once (score_batches)


@dataclass
class AudienceScores:
    name: str
    column: int  # the model's output index for this audience
    segment: TopK  # users eligible for the segment, best first
    population: TopK  # every user (seed included), best first, ties by id: rank cut-offs for recall and relevance
    score_sum: float = 0.0
    eligible: int = 0
    holdout: list[tuple[np.ndarray, pa.Array]] = field(default_factory=list)  # (scores, ids) per batch

    def holdout_scores(self) -> tuple[np.ndarray, pa.Array]:
        """Scores and ids of the held-out seed users seen so far (in arrival order)."""
        if not self.holdout:
            return np.zeros(0, dtype=np.float32), pa.array([], type=pa.string())
        return np.concatenate([s for s, _ in self.holdout]), pa.concat_arrays([i for _, i in self.holdout])


@dataclass
class ExportOptions:
    include_seed: bool
    exclusion: str  # exact | randomized
    exclusion_epsilon: float
    min_score: float | None
    holdout_fraction: float
    split_seed: int


def empty_state(audiences: dict[str, int], k: int) -> dict[str, AudienceScores]:
    """Per audience: nothing scored yet, top-k of size ``k`` (the largest bin)."""
    return {name: AudienceScores(name, col, TopK(k), TopK(k)) for name, col in audiences.items()}


def score_batches(
    dataset: ds.Dataset,
    row_filter,
    spec: FeatureSpec,
    model: torch.nn.Module,
    device: torch.device,
    audiences: dict[str, int],
    batch_rows: int,
    path: str,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[pa.Array, dict[str, np.ndarray]]]:
    """Every user's id and score per audience, batch by batch (or shard ``(index, count)`` of the
    row groups). A function of the DP model and the publisher table only: no seed goes in, so
    what comes out is post-processing, safe to write where the operator reads (shard parts)."""
    model.eval()
    for batch in row_group_batches(dataset, spec.columns, row_filter, batch_rows, shard):
        if batch.num_rows == 0:
            continue
        ids = batch.column(spec.id_column).cast(pa.string())
        parts = []
        with torch.no_grad():
            # Encoded and scored ENCODE_ROWS at a time: a 64k-row batch's input matrix (0.13 GB at
            # the demo's 517 numeric inputs) is mapped fresh from the OS at every batch, and its
            # page faults cost as much as the arithmetic; an 8k slice reuses the heap's memory.
            for start in range(0, batch.num_rows, ENCODE_ROWS):
                inputs = [t.to(device) for t in encode(batch.slice(start, ENCODE_ROWS), spec, path).tensors()]
                parts.append(torch.sigmoid(model(*inputs)).float().cpu().numpy())
        probs = np.concatenate(parts) if len(parts) > 1 else parts[0]
        yield ids, {name: np.ascontiguousarray(probs[:, column]) for name, column in audiences.items()}


class Tally:
    """Everything that reads the seed, fed scored batches: seed membership, the held-out split,
    exclusion and the top-k per audience. The single-process export feeds it straight from
    :func:`score_batches`, a sharded export's merge from the parts, so both release the same."""

    def __init__(self, audiences: dict[str, int], seeds: Mapping[str, np.ndarray | pa.Array], k: int, options: ExportOptions):
        self.state = empty_state(audiences, k)
        self.seeds = {name: pa.array(seeds[name], type=pa.string()) for name in audiences}
        self.options = options
        self.rng = np.random.default_rng()  # OS entropy: randomised response must not be replayable
        self.users = 0

    def add(self, ids: pa.Array, scores: Mapping[str, np.ndarray]) -> None:
        self.users += len(ids)
        for name, st in self.state.items():
            _update(st, scores[name], ids, self.seeds[name], self.options, self.rng)


def score_population(
    dataset: ds.Dataset,
    row_filter,
    spec: FeatureSpec,
    model: torch.nn.Module,
    device: torch.device,
    audiences: dict[str, int],
    seeds: Mapping[str, np.ndarray | pa.Array],
    k: int,
    options: ExportOptions,
    batch_rows: int,
    path: str,
) -> tuple[dict[str, AudienceScores], int]:
    """Score all users and tally them in one pass; returns per-audience state and the number
    of users scored."""
    tally = Tally(audiences, seeds, k, options)
    for ids, scores in score_batches(dataset, row_filter, spec, model, device, audiences, batch_rows, path):
        tally.add(ids, scores)
    return tally.state, tally.users


def row_group_batches(dataset: ds.Dataset, columns: list[str], row_filter, batch_rows: int, shard: tuple[int, int] | None = None):
    """Record batches read one Parquet row group at a time, on this thread.

    Arrow's scanner reads ahead asynchronously; while the consumer (the model) is slower than
    the reader, its buffers grew to 0.6-0.9 GB on 1M-row files, whatever the readahead settings.
    Reading row group by row group holds one decoded row group at a time (about 0.02 GB for
    64k-row groups), for 10M users as for 1M; a file written as one giant row group is still
    read whole. ``shard=(index, count)`` keeps every count-th row group (in file order), so
    shards split the work evenly even over a few large files.
    """
    # In file order (row_groups sorts by path): every shard process must see the same order.
    for position, piece in enumerate(row_groups(dataset.get_fragments(filter=row_filter), row_filter, dataset.schema)):
        if shard is not None and position % shard[1] != shard[0]:
            continue
        yield from piece.to_batches(schema=dataset.schema, columns=columns, filter=row_filter, batch_size=batch_rows, use_threads=False)


def _update(st: AudienceScores, score: np.ndarray, ids: pa.Array, seed: pa.Array, options: ExportOptions, rng: np.random.Generator) -> None:
    member = pc.is_in(ids, value_set=seed).to_numpy(zero_copy_only=False)
    # Ids ride along so the report can rank tied scores by id (see report.holdout_hits).
    st.population.push(score, None, ids)
    st.score_sum += float(score.sum(dtype=np.float64))
    if member.any():
        rows = np.flatnonzero(member)
        member_ids = ids.take(pa.array(rows))
        held = split_draws(member_ids, options.split_seed)[:, 0] < options.holdout_fraction
        st.holdout.append((score[rows[held]], member_ids.filter(pa.array(held))))
    if options.include_seed:
        eligible = np.ones_like(member)
    elif options.exclusion == "randomized":
        eligible = ~randomized_exclusion(member, options.exclusion_epsilon, rng)
    else:
        eligible = ~member
    if options.min_score is not None:
        eligible &= score >= options.min_score
    st.eligible += int(eligible.sum())
    rows = np.flatnonzero(eligible)
    keys = score[rows] + (SEED_FIRST * member[rows] if options.include_seed else 0.0)
    st.segment.push(keys, score[rows], ids, rows)
