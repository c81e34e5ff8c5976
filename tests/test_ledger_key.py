"""The ledger's key is who the publisher users are: storage, order and the seed do not open a fresh
budget, a new snapshot of mostly the same users draws on the old one, and only the data owners'
command creates or renews a budget."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lookalike.cli.budget import publisher_users
from lookalike.errors import LookalikeError
from lookalike.privacy.budget_match import find_budget
from lookalike.privacy.budgets import create_budget
from lookalike.privacy.fingerprint import SKETCH_SIZE, users_key
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.rules import Rules
from lookalike.training.train import run


def _ids(n: int, prefix: str = "u") -> pa.Array:
    return pa.array([f"{prefix}{i:07d}" for i in range(n)])


def test_storage_order_and_compression_do_not_change_the_key(demo_dir, tmp_path):
    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table()
    original = publisher_users(str(demo_dir / "publisher"), "user_id")
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    pq.write_table(shuffled, tmp_path / "one.parquet", compression="zstd", row_group_size=333)
    assert publisher_users(str(tmp_path / "one.parquet"), "user_id").digest == original.digest
    # one more user is another set of users (but, below, still the same budget)
    extra = pa.concat_tables([table, table.slice(0, 1).set_column(0, "user_id", pa.array(["someone-new"]))])
    pq.write_table(extra, tmp_path / "extra.parquet", compression="snappy")
    assert publisher_users(str(tmp_path / "extra.parquet"), "user_id").digest != original.digest


@pytest.mark.parametrize("n", [1000, 50_000])
def test_the_sketch_estimates_shared_users(n):
    base = _ids(n)
    snapshot = pa.concat_arrays([base.slice(n // 10), _ids(n // 20, "new")])  # 10% left, 5% joined
    key, snap = users_key(base), users_key(snapshot)
    expected = (n - n // 10) / (n - n // 10 + n // 20)
    tolerance = 1e-12 if n <= SKETCH_SIZE else 5 * (expected * (1 - expected) / SKETCH_SIZE) ** 0.5
    assert snap.share_in(key) == pytest.approx(expected, abs=tolerance)
    assert key.share_in(users_key(_ids(n, "other"))) == 0.0 and key.share_in(key) == 1.0
    # a small window of a large table lies entirely in it
    assert users_key(base.slice(0, n // 5)).share_in(key) == pytest.approx(1.0, abs=0.05)


def test_a_new_snapshot_draws_on_the_old_budget_and_cannot_get_a_fresh_one(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    base = users_key(_ids(20_000))
    budget = create_budget(ledger, base, 3.0, None, Rules())
    snapshot = users_key(pa.concat_arrays([_ids(20_000).slice(2000), _ids(1000, "new")]))
    found = find_budget(ledger, snapshot)
    assert found.fingerprint == budget and found.new_snapshot is not None and found.new_snapshot.digest == snapshot.digest
    assert found.share == pytest.approx(18_000 / 19_000)  # exact: the hashes, not the sketch
    with pytest.raises(LookalikeError, match="already covered by budget"):
        create_budget(ledger, snapshot, 3.0, None, Rules())
    # a reservation records the snapshot, which then matches exactly
    ledger.reserve(budget, 1.0, 1e-6, kind="train", description="t", attach=found.new_snapshot)
    again = find_budget(ledger, snapshot)
    assert again.fingerprint == budget and again.new_snapshot is None
    # other users: no budget, and a run on them is refused until the owners create one
    with pytest.raises(LookalikeError, match="has no budget for this publisher data"):
        find_budget(ledger, users_key(_ids(5000, "stranger")))


def test_an_unmatched_seed_id_or_another_seed_file_charges_the_same_budget(cfg_factory, demo_dir, tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text((demo_dir / "seed.jsonl").read_text() + json.dumps({"user_id": "matches-nobody", "audience": "luxury"}) + "\n")
    first = cfg_factory("model=centroid", "privacy.target_epsilon=1")
    run(first)
    run(cfg_factory("model=centroid", "privacy.target_epsilon=1", f"data.seed_path={seed}"))
    (status,) = Ledger(first.ledger.path).status()
    assert status.runs == 2  # one budget, both runs charged to it
    # what the ledger keeps of the data is the publisher's users alone: nothing of the seed
    rows = sqlite3.connect(first.ledger.path).execute("select digest, sketch from datasets").fetchall()
    publisher = publisher_users(str(demo_dir / "publisher"), "user_id")
    assert rows == [(publisher.digest, publisher.to_json())]


def test_a_run_on_data_without_a_budget_is_refused_and_writes_nothing(cfg_factory, tmp_path):
    out = tmp_path / "out"
    cfg = cfg_factory(out=out, owner=False)
    with pytest.raises(LookalikeError, match="does not exist: the data owners create"):
        run(cfg)
    assert not out.exists() or not any(out.rglob("*"))


def test_the_owners_attach_a_grown_table_to_its_budget(demo_dir, tmp_path, capsys):
    from lookalike.cli.budget import main as budget_main

    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table()
    grown = pa.concat_tables([table] + [table.set_column(0, "user_id", pa.array([f"{u}-b{i}" for u in table.column("user_id").to_pylist()])) for i in range(3)])
    pq.write_table(grown, tmp_path / "grown.parquet")  # 4x the users, the old ones among them
    ledger = str(tmp_path / "ledger.sqlite")
    budget_main(["--ledger", ledger, "create", "--publisher", str(demo_dir / "publisher"), "--epsilon", "3"])
    with pytest.raises(SystemExit):  # the old users would get a second budget
        budget_main(["--ledger", ledger, "create", "--publisher", str(tmp_path / "grown.parquet"), "--epsilon", "3"])
    assert "already covered by budget" in capsys.readouterr().err
    fingerprint = Ledger(ledger).status()[0].fingerprint
    budget_main(["--ledger", ledger, "attach", fingerprint[:10], "--publisher", str(tmp_path / "grown.parquet")])
    assert find_budget(Ledger(ledger), publisher_users(str(tmp_path / "grown.parquet"), "user_id")).fingerprint == fingerprint
