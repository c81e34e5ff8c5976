"""The real-data example: UCI Adult as a publisher table and an income >50K seed.

The label (``income``) never reaches the publisher table, nor does the census sampling weight
(``fnlwgt``, not a property of the person). Every >50K user goes into the seed file; the
``experiment=adult`` config holds half of them out (``data.holdout_fraction=0.5``), so the model
trains on half of the >50K users and is evaluated on the other half.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike.paths import ADULT_TABLE

AUDIENCE = "high_income"


def write_adult(output_dir: Path, source: Path = ADULT_TABLE) -> tuple[int, int]:
    """Write ``publisher.parquet`` and ``seed.jsonl``; return (users, seed users)."""
    table = pq.read_table(source)
    ids = pa.array([f"adult-{i:05d}" for i in range(table.num_rows)])
    rich = pc.equal(table.column("income"), ">50K")
    publisher = table.drop_columns(["income", "fnlwgt"])
    publisher = publisher.add_column(0, "user_id", ids)
    # Column names with '-' work, but underscores read better in configs and SQL.
    publisher = publisher.rename_columns([c.replace("-", "_") for c in publisher.column_names])
    output_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(publisher, output_dir / "publisher.parquet")
    seed = ids.filter(rich).to_pylist()
    (output_dir / "seed.jsonl").write_text("".join(json.dumps({"user_id": u, "audience": AUDIENCE}) + "\n" for u in seed))
    return table.num_rows, len(seed)
