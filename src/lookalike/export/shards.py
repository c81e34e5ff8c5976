"""Sharded export: each shard scores its share of the row groups and writes its part; a merge
step combines the parts and makes the one release (report, segments, ledger charge).

A part holds, per audience, the shard's best ``max(sizes)`` segment candidates (id, key, score),
its best ``max(sizes)`` population users (score, id), the score sum, the eligible count and its
held-out seed users (score, id). The global top k is contained in the union of the shards' top k,
so merging the parts through the same streaming top-k gives exactly the single-process
segments and population order (ties by id: the report's hit counts need the ids), in
O(k x shards) memory. Parts are seed-derived (exclusion, held-out scores): they
stay inside the clean room, in ``export.shard.parts_dir``, and the merge deletes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.errors import ConfigError
from lookalike.export.job import ExportJob, Scored
from lookalike.export.scoring import empty_state


def signature(job: ExportJob) -> dict:
    """What every shard and the merge must agree on."""
    return {
        "model": job.uri,
        "fingerprint": job.fingerprint,
        "population": job.population,
        "sizes": job.sizes,
        "audiences": job.audiences,
        "options": vars(job.options),
    }


def save_part(job: ExportJob, scored: Scored, index: int, count: int, folder: Path) -> Path:
    part = folder / f"shard-{index:04d}-of-{count:04d}"
    staging = part.with_name(part.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, st in scored.state.items():
        keys, scores, ids = st.segment.result()
        pq.write_table(pa.table({"key": keys, "score": scores, "id": ids}), staging / f"{name}.segment.parquet")
        _, scores, ids = st.population.result()
        pq.write_table(pa.table({"score": scores, "id": ids}), staging / f"{name}.population.parquet")
        scores, ids = st.holdout_scores()
        pq.write_table(pa.table({"score": scores, "id": ids}), staging / f"{name}.holdout.parquet")
    meta = {
        "signature": signature(job),
        "users": scored.users,
        "seconds": scored.seconds,
        "totals": {name: {"score_sum": st.score_sum, "eligible": st.eligible} for name, st in scored.state.items()},
    }
    (staging / "part.json").write_text(json.dumps(meta))
    shutil.rmtree(part, ignore_errors=True)
    staging.rename(part)  # a part is there whole or not at all
    return part


def load_parts(job: ExportJob, folder: Path) -> Scored:
    """Merge every part in ``folder``; refuse a missing, foreign or duplicated shard."""
    parts = sorted(p for p in folder.glob("shard-*-of-*") if p.is_dir() and not p.name.endswith(".tmp")) if folder.is_dir() else []
    if not parts:
        raise ConfigError("export.shard.parts_dir", f"'{folder}' holds no shard parts; run the shards first (export.shard.index=i export.shard.count=n)")
    counts = {int(p.name.split("-of-")[1]) for p in parts}
    indices = sorted(int(p.name.split("-")[1]) for p in parts)
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        raise ConfigError("export.shard.parts_dir", f"'{folder}' holds shards {indices} of {sorted(counts)}: every shard 0..n-1 of one run is needed")
    state = empty_state(job.audiences, max(job.sizes))
    users, seconds = 0, 0.0
    for part in parts:
        meta = json.loads((part / "part.json").read_text())
        if meta["signature"] != json.loads(json.dumps(signature(job))):
            raise ConfigError("export.shard.parts_dir", f"part '{part.name}' was scored with other settings (model, data, bins or options) than this merge")
        users, seconds = users + meta["users"], max(seconds, meta["seconds"])
        for name, st in state.items():
            segment = pq.read_table(part / f"{name}.segment.parquet")
            st.segment.push(segment.column("key").to_numpy(), segment.column("score").to_numpy(), segment.column("id").combine_chunks())
            population = pq.read_table(part / f"{name}.population.parquet")
            st.population.push(population.column("score").to_numpy(), None, population.column("id").combine_chunks())
            holdout = pq.read_table(part / f"{name}.holdout.parquet")
            st.holdout.append((holdout.column("score").to_numpy(), holdout.column("id").combine_chunks()))
            st.score_sum += meta["totals"][name]["score_sum"]
            st.eligible += meta["totals"][name]["eligible"]
    return Scored(state, users, seconds)


def remove_parts(folder: Path) -> None:
    for part in folder.glob("shard-*-of-*"):
        shutil.rmtree(part, ignore_errors=True)
