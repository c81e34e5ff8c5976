"""A ledger an older version wrote keys its datasets by the version-1 hash: it is refused (never
matched on the new hash, where its users would look like strangers with no budget) until the
owners re-key it from the tables, after which the same users draw on the same budget."""

from __future__ import annotations

import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.cli.budget import publisher_users
from lookalike.errors import LookalikeError
from lookalike.privacy.budget_match import find_budget
from lookalike.privacy.budgets import create_budget
from lookalike.privacy.fingerprint import merge_parts, part_of, v1_user_hashes
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.rules import Rules


def _table(tmp_path, name: str, ids: list[str]):
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({"user_id": ids, "x": [1.0] * len(ids)}), path, row_group_size=700)
    return str(path)


def _old_ledger(tmp_path, ids: list[str], epsilon: float = 3.0) -> tuple[Ledger, str]:
    """A ledger as version 1 stored it: v1 hashes and digest, a sketch without a version."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    fingerprint = create_budget(ledger, merge_parts([part_of(v1_user_hashes(pa.array(ids)))], version=1), epsilon, None, Rules())
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with db:
        for digest, sketch in db.execute("select digest, sketch from datasets").fetchall():
            raw = json.loads(sketch)
            assert raw.pop("version") == 1
            db.execute("update datasets set sketch = ? where digest = ?", (json.dumps(raw), digest))
    db.close()
    return ledger, fingerprint


def test_an_old_ledger_is_refused_until_rekeyed_then_the_same_users_match_the_same_budget(tmp_path, capsys):
    ids = [f"u{i:05d}" for i in range(3000)]
    ledger, fingerprint = _old_ledger(tmp_path, ids)
    ledger.reserve(fingerprint, 1.0, 1e-6, kind="train", description="before the upgrade")
    table = _table(tmp_path, "publisher", ids)
    key = publisher_users(table, "user_id")
    for attempt in (lambda: find_budget(ledger, key), lambda: create_budget(ledger, key, 5.0, None, Rules())):
        with pytest.raises(LookalikeError, match=r"by the version-1 user hash.*lookalike-budget rekey --publisher") as refused:
            attempt()
        assert "\n" not in str(refused.value)
    with pytest.raises(SystemExit):  # the owners' command refuses a fresh budget for these users too
        budget_main(["--ledger", str(ledger.path), "create", "--publisher", table, "--epsilon", "9"])
    assert "version-1 user hash" in capsys.readouterr().err
    assert len(ledger.status()) == 1

    budget_main(["--ledger", str(ledger.path), "rekey", "--publisher", table])
    assert "re-keyed 1 dataset(s)" in capsys.readouterr().out
    match = find_budget(ledger, key)
    assert match.fingerprint == fingerprint and match.new_snapshot is None and match.share == 1.0
    assert ledger.remaining(fingerprint) == pytest.approx(2.0)  # the budget, and what was spent on it, carried over
    with pytest.raises(LookalikeError, match="already covered by budget"):
        create_budget(ledger, key, 5.0, None, Rules())
    # a grown table still draws on it, now matched on the new hashes
    grown = publisher_users(_table(tmp_path, "grown", ids + [f"new{i}" for i in range(500)]), "user_id")
    assert find_budget(ledger, grown).fingerprint == fingerprint


def test_rekey_needs_a_table_holding_every_stored_user(tmp_path, capsys):
    ids = [f"u{i:05d}" for i in range(2000)]
    ledger, fingerprint = _old_ledger(tmp_path, ids)
    with pytest.raises(SystemExit):
        budget_main(["--ledger", str(ledger.path), "rekey", "--publisher", _table(tmp_path, "part", ids[:1500])])
    err = capsys.readouterr().err
    assert "holds all the users of none of the 1 dataset(s)" in err and err.count("\n") == 1
    with pytest.raises(LookalikeError, match="version-1 user hash"):
        find_budget(ledger, publisher_users(_table(tmp_path, "same", ids), "user_id"))
    # a table holding more users (a later snapshot) re-keys it; the extra users join nothing
    budget_main(["--ledger", str(ledger.path), "rekey", "--publisher", _table(tmp_path, "more", ids + ["extra"])])
    assert "re-keyed 1 dataset(s)" in capsys.readouterr().out
    match = find_budget(ledger, publisher_users(_table(tmp_path, "same", ids), "user_id"))
    assert match.fingerprint == fingerprint and match.share == 1.0
    with pytest.raises(LookalikeError, match="has no budget"):
        find_budget(ledger, publisher_users(_table(tmp_path, "stranger", ["extra", "other"]), "user_id"))
