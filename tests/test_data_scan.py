"""Publisher scanning (projection, window, pruning, cost) and seed matching on real Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from lookalike.data.config import WindowConfig
from lookalike.data.matching import check_publisher_ids, match_seed
from lookalike.data.publisher import open_publisher, scan_publisher, window_filter
from lookalike.errors import ConfigError, DataError


def test_window_on_a_partition_column_prunes_files_and_projection_cuts_bytes(demo_dir):
    path = demo_dir / "publisher"
    dataset = open_publisher(path)
    full, full_stats = scan_publisher(dataset, ["user_id", "age", "interests"], None, path)
    window = WindowConfig(**{"column": "cohort", "start": "2025-02", "end": "2025-04"})
    part, part_stats = scan_publisher(dataset, ["user_id", "age", "interests"], window_filter(dataset, window, path), path)
    assert full_stats.files_scanned == 4 and part_stats.files_scanned == 2
    assert full_stats.rows_scanned == full.num_rows == 4000
    assert part_stats.rows_scanned == part_stats.rows_in_window == part.num_rows
    assert 1000 < part.num_rows < 3000 and part_stats.bytes_scanned < full_stats.bytes_scanned
    _, narrow = scan_publisher(dataset, ["user_id"], None, path)
    assert 0 < narrow.bytes_scanned < full_stats.bytes_scanned


def test_window_errors_name_the_setting(demo_dir):
    path = demo_dir / "publisher"
    dataset = open_publisher(path)
    with pytest.raises(ConfigError, match="data.window.column"):
        window_filter(dataset, WindowConfig(**{"column": "day", "start": 1, "end": None}), path)
    with pytest.raises(ConfigError, match="data.window"):
        window_filter(dataset, WindowConfig(**{"column": "cohort", "start": None, "end": None}), path)


def test_timestamp_window(tmp_path):
    times = pa.array(np.array(["2025-01-01", "2025-02-01", "2025-03-01"], dtype="datetime64[ms]"))
    path = tmp_path / "t.parquet"
    ds.write_dataset(pa.table({"user_id": ["a", "b", "c"], "seen": times}), tmp_path / "t", format="parquet")
    dataset = open_publisher(tmp_path / "t")
    f = window_filter(dataset, WindowConfig(**{"column": "seen", "start": "2025-01-15", "end": "2025-03-01"}), path)
    table, _ = scan_publisher(dataset, ["user_id"], f, path)
    assert table.column("user_id").to_pylist() == ["b"]


def _ids(n: int) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array([f"u{i}" for i in range(n)])])


def test_matching_lays_out_disjoint_train_holdout_and_eval_sets():
    ids = _ids(4000)
    seeds = {"a": np.array([f"u{i}" for i in range(0, 400)] + ["stranger"], dtype=object), "b": np.array([f"u{i}" for i in range(200, 600)], dtype=object)}
    ts = match_seed(ids, seeds, min_matching_seed_size=25, holdout_fraction=0.2, negative_rate=0.3, eval_negative_rate=0.1, split_seed=1, trusted=True)
    assert ts.matched == {"a": 400, "b": 400}
    held = np.concatenate(list(ts.holdout_rows.values()))
    assert not set(ts.train_rows) & set(held) and not set(ts.train_rows) & set(ts.eval_negative_rows)
    assert set(ts.eval_negative_rows).isdisjoint(range(600)) and set(held) <= set(range(600))
    positives = ts.train_rows[ts.train_labels.max(1) > 0]
    assert len(positives) + len(set(held)) == 600 and 0.15 < len(set(held)) / 600 < 0.25
    # the background is drawn from every user not held out, seed or not (seed users join it too)
    background = ts.train_rows[ts.train_labels.max(1) == 0]
    assert 0.25 < len(background) / (4000 - len(set(held))) < 0.35 and 0.07 < len(ts.eval_negative_rows) / 3400 < 0.13
    assert set(background) & set(positives) and not set(background) & set(held)
    # multi-label: a user in both audiences is one positive example with two positive labels
    both = [i for i, r in enumerate(ts.train_rows) if 200 <= r < 400 and ts.train_labels[i].max() > 0]
    assert both and all(ts.train_labels[i].tolist() == [1.0, 1.0] for i in both)


def test_one_users_membership_changes_only_that_users_example():
    """The DP-SGD neighbouring relation: the training sets differ in exactly one example."""
    ids = _ids(3000)
    base = [f"u{i}" for i in range(300)]
    kwargs = dict(min_matching_seed_size=25, holdout_fraction=0.2, negative_rate=0.3, eval_negative_rate=0.1, split_seed=5, trusted=True)
    with_user = match_seed(ids, {"a": np.array(base, dtype=object)}, **kwargs)
    without = match_seed(ids, {"a": np.array(base[1:], dtype=object)}, **kwargs)
    a = dict(zip(with_user.train_rows.tolist(), with_user.train_labels[:, 0].tolist()))
    b = dict(zip(without.train_rows.tolist(), without.train_labels[:, 0].tolist()))
    changed = {r for r in set(a) | set(b) if a.get(r) != b.get(r)}
    assert changed <= {0} and set(with_user.eval_negative_rows) ^ set(without.eval_negative_rows) <= {0}


def test_small_seed_is_refused_without_revealing_the_count():
    seeds = {"a": np.array([f"u{i}" for i in range(30)], dtype=object)}
    kwargs = dict(min_matching_seed_size=50, holdout_fraction=0.2, negative_rate=0.5, eval_negative_rate=0.1, split_seed=1)
    with pytest.raises(DataError, match="fewer than 50") as err:
        match_seed(_ids(100), seeds, trusted=False, **kwargs)
    assert "30" not in str(err.value)
    with pytest.raises(DataError, match=r"\(30 matched\)"):
        match_seed(_ids(100), seeds, trusted=True, **kwargs)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (pa.chunked_array([pa.array(["a", "b", "a"])]), "duplicate user ids"),
        (pa.chunked_array([pa.array(["a", None])]), "1 empty ids"),
        (pa.chunked_array([pa.array([1, 2])]), "type int64: store ids as strings"),
    ],
)
def test_publisher_ids_must_be_unique_non_null_strings(ids, message):
    with pytest.raises(DataError, match=message):
        check_publisher_ids(ids, "user_id", "pub")


def test_split_draws_are_stable_per_user_whatever_the_order():
    from lookalike.data.matching import split_draws

    ids = pa.array([f"u{i}" for i in range(2000)])
    u = split_draws(ids, 42)
    assert u.shape == (2000, 2) and ((u >= 0) & (u < 1)).all()
    assert np.array_equal(split_draws(ids.take(pa.array(np.arange(1999, -1, -1))), 42), u[::-1])
    assert 0.15 < (u[:, 0] < 0.2).mean() < 0.25 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1
    assert not np.array_equal(split_draws(ids, 43), u)


@pytest.mark.parametrize("window", [None, {"column": "cohort", "start": "2025-02", "end": "2025-04"}, {"column": "age", "start": 30, "end": 50}])
def test_export_reads_row_group_by_row_group_the_same_rows_as_the_scanner(demo_dir, tmp_path, window):
    from lookalike.export.scoring import row_group_batches

    path = demo_dir / "publisher"
    dataset = open_publisher(path)
    row_filter = window_filter(dataset, WindowConfig(**window), path) if window else None
    expected = dataset.to_table(columns=["user_id", "age"], filter=row_filter)
    batches = list(row_group_batches(dataset, ["user_id", "age"], row_filter, 300))
    got = pa.Table.from_batches(batches)
    assert sorted(got.column("user_id").to_pylist()) == sorted(expected.column("user_id").to_pylist()) and got.num_rows > 0
    assert max(b.num_rows for b in batches) <= 300
    # many row groups in one file: each read on its own
    pq_path = tmp_path / "groups.parquet"
    import pyarrow.parquet as pq

    pq.write_table(expected, pq_path, row_group_size=100)
    groups = list(row_group_batches(ds.dataset(pq_path), ["user_id"], None, 1000))
    assert len(groups) == -(-expected.num_rows // 100) and sum(b.num_rows for b in groups) == expected.num_rows
