"""Each torchrun rank reads its share of the row groups; combined, the ranks prepare what one
process prepares from the whole table. Real gloo process groups (spawned processes, a file
store), real Parquet files."""

from __future__ import annotations

import pickle
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from lookalike.data.row_group_shares import assign
from lookalike.errors import DataError, LookalikeError
from lookalike.parallel.collective import GroupCollective
from lookalike.training.config import train_config
from lookalike.training.prepare import prepare
from tests.conftest import make_cfg


def _worker(rank: int, size: int, folder, overrides: list[str], demo_dir, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder / store}", rank=rank, world_size=size)
    try:
        # owner=False: preparing reads no ledger, and two ranks each creating the owners' budget
        # raced on one ledger (issue 22 item 14).
        data = prepare(train_config(make_cfg(demo_dir, folder / "out", *overrides, owner=False)), GroupCollective(rank, size))
        result = {"summary": _summary(data)}
    except LookalikeError as exc:
        result = {"error": (type(exc).__name__, str(exc))}
    except Exception:  # noqa: BLE001 - the parent reports it
        result = {"crash": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    (folder / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def _rows(features, labels=None) -> np.ndarray:
    """Examples as sortable rows (numerics rounded: shards' standardisation differs by rounding)."""
    parts = [np.round(features.numeric, 4), features.categorical, *features.multi] + ([labels] if labels is not None else [])
    rows = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)
    return rows[np.lexsort(rows.T[::-1])] if len(rows) else rows


def _summary(data) -> dict:
    return {
        "spec": data.spec,
        "n_train": data.n_train,
        "matched": data.training.matched,
        "rows": data.publisher_rows,
        "scan": data.scan,
        "fingerprint": data.users.digest,
        "train": _rows(data.train_features, data.training.train_labels),
        "holdout": {a: _rows(f) for a, f in data.holdout_features.items()},
        "negatives": _rows(data.eval_negative_features),
    }


def run_ranks(size: int, tmp_path, demo_dir, *overrides: str) -> list[dict]:
    store = f"store{len(list(tmp_path.glob('store*')))}"  # a file store must not be reused
    mp.start_processes(_worker, args=(size, tmp_path, list(overrides), demo_dir, store), nprocs=size, start_method="spawn")
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(size)]
    for result in results:
        assert "crash" not in result, result.get("crash")
    return results


def test_row_groups_are_balanced_by_rows_and_every_group_has_one_rank():
    shares = assign([970, 1020, 996, 1014, 10], 2)
    assert sorted(i for share in shares for i in share) == [0, 1, 2, 3, 4]
    assert shares == [[0, 1, 4], [2, 3]]  # 2000 and 2010 rows
    assert assign([5], 3) == [[0], [], []]


@pytest.mark.slow
def test_two_ranks_prepare_what_one_process_prepares(demo_dir, tmp_path):
    single = _summary(prepare(train_config(make_cfg(demo_dir, tmp_path / "one"))))
    first, second = (r["summary"] for r in run_ranks(2, tmp_path, demo_dir))
    for rank in (first, second):
        assert rank["n_train"] == single["n_train"] and rank["matched"] == single["matched"] and rank["rows"] == single["rows"] == 4000
        assert rank["scan"] == single["scan"]
        assert [f.vocabulary for f in rank["spec"].categorical + rank["spec"].multi_categorical] == [
            f.vocabulary for f in single["spec"].categorical + single["spec"].multi_categorical
        ]
        for mine, whole in zip(rank["spec"].numeric, single["spec"].numeric):
            assert (mine.name, mine.missing_flag) == (whole.name, whole.missing_flag)
            assert mine.mean == pytest.approx(whole.mean, rel=1e-12, abs=1e-12) and mine.std == pytest.approx(whole.std, rel=1e-12)
    # Each rank trains on its own users; together they are the single process's training set.
    assert 0.4 < len(first["train"]) / single["n_train"] < 0.6
    np.testing.assert_array_equal(_rows_of(first["train"], second["train"]), single["train"])
    # Rank 0 evaluates on every rank's held-out users; rank 1 holds none.
    for audience, rows in single["holdout"].items():
        np.testing.assert_array_equal(first["holdout"][audience], rows)
        assert len(second["holdout"][audience]) == 0
    np.testing.assert_array_equal(first["negatives"], single["negatives"])
    # every rank knows the whole table's users key (merged from the ranks' sketches)
    assert first["fingerprint"] == second["fingerprint"] == single["fingerprint"]


def _rows_of(*parts: np.ndarray) -> np.ndarray:
    rows = np.concatenate(parts)
    return rows[np.lexsort(rows.T[::-1])]


def _two_files(folder, second: dict) -> None:
    folder.mkdir()
    pq.write_table(pa.table({"user_id": ["a1", "a2", "a3"], "age": [30.0, 41.0, 52.0], "device": ["ios", "web", "ios"]}), folder / "a.parquet")
    pq.write_table(pa.table(second), folder / "b.parquet")


@pytest.mark.slow
def test_bad_data_in_one_rank_stops_every_rank_with_the_same_error(demo_dir, tmp_path):
    """A user id in both ranks' files, then a NaN in one rank's file: every rank raises the
    one-line error a single process raises, instead of one rank hanging in a collective."""
    duplicated = tmp_path / "duplicated"
    _two_files(duplicated, {"user_id": ["b1", "a2"], "age": [20.0, 25.0], "device": ["web", "web"]})
    for rank in run_ranks(2, tmp_path, demo_dir, f"data.publisher_path={duplicated}", "data.features=null"):
        assert "has duplicate user ids" in rank["error"][1] and str(duplicated) in rank["error"][1]
    with pytest.raises(DataError, match="duplicate user ids"):
        prepare(train_config(make_cfg(demo_dir, tmp_path / "one", f"data.publisher_path={duplicated}", "data.features=null")))

    nan = tmp_path / "nan"
    _two_files(nan, {"user_id": ["b1", "b2"], "age": [20.0, float("nan")], "device": ["web", "web"]})
    errors = [r["error"] for r in run_ranks(2, tmp_path, demo_dir, f"data.publisher_path={nan}", "data.features=null")]
    assert errors[0][1] == errors[1][1] and "numeric column 'age' has 1 NaN/inf values" in errors[0][1]
    assert sorted(kind for kind, _ in errors) == ["DataError", "LookalikeError"]  # raised by one rank, agreed by the other
