"""Seed formats (JSON lines, CSV, Parquet), audiences, and the seed's bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.data.seed import read_seed
from lookalike.errors import DataError
from lookalike.export.output import StagedOutput


def test_jsonl_with_audience_column_splits_audiences(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text('{"user_id": "u1", "audience": "a"}\n{"user_id": "u2", "audience": "b"}\n{"user_id": "u1", "audience": "a"}\n')
    seeds = read_seed(str(path), "user_id", "audience")
    assert {k: v.tolist() for k, v in seeds.items()} == {"a": ["u1"], "b": ["u2"]}


def test_csv_keeps_leading_zeros_and_parquet_and_lists_name_audiences(tmp_path):
    csv = tmp_path / "buyers.csv"
    csv.write_text("user_id\n00123\n0042\n")
    parquet = tmp_path / "visitors.parquet"
    pq.write_table(pa.table({"user_id": ["v1", "v2", None]}), parquet)
    seeds = read_seed([str(csv), str(parquet)], "user_id", "audience")
    assert {k: v.tolist() for k, v in seeds.items()} == {"buyers": ["00123", "0042"], "visitors": ["v1", "v2"]}
    mapped = read_seed({"x": str(csv)}, "user_id", "audience")
    assert list(mapped) == ["x"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "empty|could not be read"),
        ("blank.csv", "user_id\n", "the seed is empty"),
        ("numbers.jsonl", '{"user_id": 17}\n', "ids must be strings"),
        ("other.csv", "email\na@b.c\n", "has no 'user_id' column"),
        ("seed.txt", "u1\n", "unknown format"),
    ],
)
def test_bad_seed_files_are_refused_with_the_file_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_seed(str(path), "user_id", "audience")
    assert name in str(err.value) and "\n" not in str(err.value)


def test_non_string_ids_in_parquet_seed_are_refused(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"user_id": [1, 2]}), path)
    with pytest.raises(DataError, match="has type int64: store ids as strings"):
        read_seed(str(path), "user_id", "audience")


def test_missing_seed_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_seed(str(tmp_path / "nope.jsonl"), "user_id", "audience")


@pytest.mark.parametrize("name", ["../../../escaped", "x/../../y", "a b", "", ".hidden", "a..b", "x" * 129])
def test_unsafe_audience_names_are_refused_where_they_enter(tmp_path, name):
    seed = tmp_path / "seed.jsonl"
    seed.write_text(json.dumps({"user_id": "u1", "audience": name}) + "\n")
    with pytest.raises(DataError, match="audience name .* is not allowed"):
        read_seed(str(seed), "user_id", "audience")
    with pytest.raises(DataError, match="is not allowed"):
        read_seed({name: str(seed)}, "user_id", "audience")
    with pytest.raises(DataError, match="is not allowed"):  # a model whose metadata was tampered with
        StagedOutput(tmp_path / "segments").write_segment(name, 1, pa.array(["u1"]), np.zeros(1))
    assert not list(tmp_path.parent.glob("escaped*")) and not (tmp_path / "segments").exists()


def test_dropped_seed_rows_are_reported_without_their_count(tmp_path, caplog):
    (tmp_path / "seed.jsonl").write_text('{"user_id": "u1"}\n{"user_id": null}\n{"user_id": ""}\n')
    with caplog.at_level("WARNING", logger="lookalike.data.seed"):
        assert read_seed(str(tmp_path / "seed.jsonl"), "user_id", "audience")["seed"].tolist() == ["u1"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "rows with an empty 'user_id' were dropped" in message and not any(ch.isdigit() for ch in message.split("'")[-1])
