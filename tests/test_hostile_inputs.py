"""Hostile and broken inputs: each gets a clear error or a documented handling, nothing is
half-written and the ledger is untouched."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lookalike.data.seed import read_seed
from lookalike.errors import LookalikeError
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import run
from tests.conftest import grant, untouched


def publisher_table(demo_dir) -> pa.Table:
    return ds.dataset(demo_dir / "publisher", partitioning="hive").to_table().drop_columns(["cohort"])


def refused(cfg, message: str, out) -> None:
    with pytest.raises(LookalikeError, match=message) as err:
        run(cfg)
    assert "\n" not in str(err.value)
    untouched(out, cfg.ledger.path)  # no charge, no MLflow store, no run folder


def test_truncated_parquet_file(cfg_factory, demo_dir, tmp_path):
    folder = tmp_path / "pub"
    folder.mkdir()
    pq.write_table(publisher_table(demo_dir), folder / "a.parquet")
    good = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    refused(cfg_factory(f"data.publisher_path={folder}", out=out), "b.parquet' is corrupt or truncated|not readable Parquet", out)


def test_schema_that_differs_across_partitions(cfg_factory, demo_dir, tmp_path):
    table = publisher_table(demo_dir)
    folder = tmp_path / "pub"
    (folder / "part=1").mkdir(parents=True)
    (folder / "part=2").mkdir(parents=True)
    pq.write_table(table.slice(0, 2000), folder / "part=1" / "a.parquet")
    second = table.slice(2000)
    second = second.set_column(second.column_names.index("age"), "age", second.column("age").cast(pa.string()))
    pq.write_table(second, folder / "part=2" / "b.parquet")
    out = tmp_path / "out"
    refused(
        cfg_factory(f"data.publisher_path={folder}", "data.exclude_columns=[part]", out=out),
        "part=2/b.parquet' stores column 'age' as string but the dataset as double",
        out,
    )


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (lambda n: [""] + [f"u{i}" for i in range(1, n)], "has 1 empty ids"),
        (lambda n: [None] + [f"u{i}" for i in range(1, n)], "has 1 empty ids"),
    ],
)
def test_empty_or_null_publisher_ids(cfg_factory, demo_dir, tmp_path, ids, message):
    table = publisher_table(demo_dir)
    table = table.set_column(0, "user_id", pa.array(ids(table.num_rows), type=pa.string()))
    pq.write_table(table, tmp_path / "pub.parquet")
    out = tmp_path / "out"
    refused(cfg_factory(f"data.publisher_path={tmp_path / 'pub.parquet'}", out=out), message, out)


def test_unicode_and_very_long_ids_train_end_to_end(cfg_factory, demo_dir, tmp_path):
    table = publisher_table(demo_dir)
    mapping = {old: f"usér-{i}-日本-{'x' * (5000 if i % 7 == 0 else 1)}" for i, old in enumerate(table.column("user_id").to_pylist())}
    table = table.set_column(0, "user_id", pa.array([mapping[u] for u in table.column("user_id").to_pylist()]))
    pq.write_table(table, tmp_path / "pub.parquet")
    lines = (demo_dir / "seed.jsonl").read_text().splitlines()
    import json

    rows = [json.loads(line) for line in lines]
    seed = tmp_path / "seed.jsonl"
    renamed = [{"user_id": mapping.get(r["user_id"], r["user_id"]), "audience": r["audience"]} for r in rows]
    seed.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in renamed))
    cfg = cfg_factory(f"data.publisher_path={tmp_path / 'pub.parquet'}", f"data.seed_path={seed}", out=tmp_path / "out", owner=False)
    grant(cfg.ledger.path, tmp_path / "pub.parquet")
    run(cfg)
    assert Ledger(cfg.ledger.path).status()[0].runs == 1


def test_seed_with_bom_crlf_blank_lines_duplicates_and_strangers(tmp_path):
    jsonl = tmp_path / "seed.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"user_id": "a"}\r\n\r\n{"user_id": "b"}\r\n{"user_id": "a"}\r\n{"user_id": "nobody-knows"}\r\n')
    csv = tmp_path / "seed.csv"
    csv.write_bytes(b"\xef\xbb\xbfuser_id\r\na\r\n\r\nb\r\na\r\n")
    assert read_seed(str(jsonl), "user_id", "audience")["seed"].tolist() == ["a", "b", "nobody-knows"]
    assert read_seed(str(csv), "user_id", "audience")["seed"].tolist() == ["a", "b"]


@pytest.mark.parametrize("key", ["paths.output_dir", "ledger.path"])
def test_outputs_inside_inputs_are_refused(cfg_factory, demo_dir, tmp_path, key):
    folder = tmp_path / "pub"
    folder.mkdir()
    pq.write_table(publisher_table(demo_dir), folder / "a.parquet")
    inside = folder / ("out" if key == "paths.output_dir" else "ledger.sqlite")
    cfg = cfg_factory(f"data.publisher_path={folder}", f"{key}={inside}", out=tmp_path / "out", owner=False)
    with pytest.raises(LookalikeError, match=f"config '{key}': .* is inside data.publisher_path"):
        run(cfg)
    assert sorted(os.listdir(folder)) == ["a.parquet"]


def test_a_file_lacking_a_feature_column_is_refused(cfg_factory, demo_dir, tmp_path):
    """Half the users trained with a column silently null, and no warning."""
    table = publisher_table(demo_dir)
    folder = tmp_path / "pub"
    folder.mkdir()
    pq.write_table(table.slice(0, 2000), folder / "a.parquet")
    pq.write_table(table.slice(2000).drop_columns(["income_k"]), folder / "b.parquet")
    out = tmp_path / "out"
    cfg = cfg_factory(f"data.publisher_path={folder}", out=out, owner=False)
    grant(cfg.ledger.path, folder)
    refused(cfg, "b.parquet' has no column 'income_k', which the dataset has", out)


def test_damaged_values_too_large_to_standardise_are_refused(cfg_factory, demo_dir, tmp_path):
    """Random bytes in a data page decoded as values up to 6.9e306 and trained a model with AUC 0."""
    table = publisher_table(demo_dir)
    age = table.column("age").to_numpy().copy()
    age[::97] = 6.9e306
    pq.write_table(table.set_column(table.column_names.index("age"), "age", pa.array(age)), tmp_path / "pub.parquet")
    out = tmp_path / "out"
    # the robust bound refuses these first; without it, the statistics' overflow still does
    cfg = cfg_factory(f"data.publisher_path={tmp_path / 'pub.parquet'}", "data.max_robust_z=null", out=out, owner=False)
    grant(cfg.ledger.path, tmp_path / "pub.parquet")
    refused(cfg, "numeric column 'age' has values too large to standardise", out)


def test_an_implausible_value_is_refused_and_the_bound_is_configurable(cfg_factory, demo_dir, tmp_path):
    table = publisher_table(demo_dir)
    age = table.column("age").to_numpy().copy()
    age[123] = 4.2e12  # one damaged value: finite, and its plain z-score is only about sqrt(n)
    pq.write_table(table.set_column(table.column_names.index("age"), "age", pa.array(age)), tmp_path / "pub.parquet")
    out = tmp_path / "out"
    cfg = cfg_factory(f"data.publisher_path={tmp_path / 'pub.parquet'}", out=out, owner=False)
    grant(cfg.ledger.path, tmp_path / "pub.parquet")
    refused(cfg, "numeric column 'age' holds 4.2e\\+12, .* robust standard deviations from its median \\(data.max_robust_z = 1e\\+06\\)", out)
    run(cfg_factory(f"data.publisher_path={tmp_path / 'pub.parquet'}", "data.max_robust_z=null", "model=centroid", out=out, owner=False))
