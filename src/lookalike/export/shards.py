"""Sharded export: each shard scores its share of the row groups and writes its part; a merge
step tallies the parts against the seed and makes the one release (report, segments, charge).

The operator picks ``export.shard.parts_dir`` and reads what lands there, and no release is made
(or charged) until the merge, so a part holds nothing seed-derived. A shard reads no seed at all:
its part is ``scores.parquet``, every user of its row groups once, with their id and one float32
score column per exported audience (a function of the DP model and the publisher table only:
post-processing), and ``part.json``, the settings signature and the number of users scored (a
row count of the publisher's own table). Seed users are in a part exactly like everyone else.

The merge streams every part back one row group at a time through the same :class:`Tally` the
single-process export feeds (seed membership, held-out split, exclusion, top-k), so it releases
exactly the single-process segments and report in O(k) memory beyond one batch. A part is about
the size of its users' ids plus 4 bytes per user and audience.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.errors import ConfigError
from lookalike.export.job import ExportJob, Scored, tally

SCORES = "scores.parquet"


def signature(job: ExportJob) -> dict:
    """What every shard and the merge must agree on: what the scores depend on. Bins, exclusion
    and the other release settings are the merge's alone; a part does not depend on them."""
    return {"model": job.uri, "fingerprint": job.fingerprint, "population": job.population, "audiences": list(job.audiences)}


def score_column(audience: str) -> str:
    return f"score:{audience}"  # ':' is not allowed in an audience name, so never "id"


def save_part(job: ExportJob, batches: Iterable[tuple[pa.Array, dict[str, np.ndarray]]], index: int, count: int, folder: Path) -> Path:
    """Write shard ``index`` of ``count`` from its scored batches, one row group per batch (a
    streaming writer: memory stays one batch). The part appears whole or not at all."""
    part = folder / f"shard-{index:04d}-of-{count:04d}"
    staging = part.with_name(part.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    schema = pa.schema([("id", pa.string())] + [(score_column(name), pa.float32()) for name in job.audiences])
    users = 0
    try:
        with pq.ParquetWriter(staging / SCORES, schema) as writer:
            for ids, scores in batches:
                columns = [ids] + [pa.array(scores[name], type=pa.float32()) for name in job.audiences]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                users += len(ids)
        (staging / "part.json").write_text(json.dumps({"signature": signature(job), "users": users}))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(part, ignore_errors=True)
    staging.rename(part)
    return part


def load_parts(job: ExportJob, folder: Path) -> Scored:
    """Tally every part in ``folder``; refuse a missing, foreign or duplicated shard."""
    parts = sorted(p for p in folder.glob("shard-*-of-*") if p.is_dir() and not p.name.endswith(".tmp")) if folder.is_dir() else []
    if not parts:
        raise ConfigError("export.shard.parts_dir", f"'{folder}' holds no shard parts; run the shards first (export.shard.index=i export.shard.count=n)")
    counts = {int(p.name.split("-of-")[1]) for p in parts}
    indices = sorted(int(p.name.split("-")[1]) for p in parts)
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        raise ConfigError("export.shard.parts_dir", f"'{folder}' holds shards {indices} of {sorted(counts)}: every shard 0..n-1 of one run is needed")
    users = 0
    for part in parts:  # every check before anything is tallied
        meta = json.loads((part / "part.json").read_text())
        if meta["signature"] != json.loads(json.dumps(signature(job))):
            raise ConfigError("export.shard.parts_dir", f"part '{part.name}' was scored with another model, data or audiences than this merge")
        users += meta["users"]
    if users != job.population:  # e.g. shards run over differently laid-out copies of the table
        raise ConfigError("export.shard.parts_dir", f"the parts in '{folder}' hold {users} users, the publisher data {job.population}")
    start, merged = time.perf_counter(), tally(job)
    columns = {name: score_column(name) for name in job.audiences}
    for part in parts:
        scores = pq.ParquetFile(part / SCORES)
        for group in range(scores.num_row_groups):  # one scoring batch at a time
            table = scores.read_row_group(group)
            merged.add(table.column("id").combine_chunks(), {name: table.column(c).to_numpy() for name, c in columns.items()})
    return Scored(merged.state, merged.users, time.perf_counter() - start)


def remove_parts(folder: Path) -> None:
    """Once released the parts are not needed: tidy the folder for the next run."""
    for part in folder.glob("shard-*-of-*"):
        shutil.rmtree(part, ignore_errors=True)
