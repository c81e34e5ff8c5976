"""A run that touches users of several budgets is charged on each and bound by the tightest rules.

The audit's two constructions: (a) one file with the rows of two owners' tables (A 60%, B 40%)
and a seed of B's users, run non-private: charged to A, B's rules never read; (b) B's 2,048
sketched users plus 97.8% of A's: matched to B "about 100%" by the sketch, so a run under B's
loose rules logged A's exact matched seed count. Membership is exact now (budget_match.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.errors import ConfigError
from lookalike.privacy.budget_match import find_budget
from lookalike.privacy.fingerprint import SKETCH_SIZE, user_hashes, users_key
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import run
from tests.conftest import grant, make_cfg


def _tables(demo_dir: Path, tmp_path: Path) -> dict[str, pa.Table]:
    a = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table()
    b = a.slice(0, 2667)
    b = b.set_column(0, "user_id", pc.binary_join_element_wise("b", b.column("user_id"), ""))  # other people, same features
    paths = {}
    for name, table in (("a", a), ("b", b)):
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(table, paths[name])
    return {"a": a, "b": b, **{f"{k}_path": v for k, v in paths.items()}}  # type: ignore[dict-item]


def _seed_of(table: pa.Table, path: Path, demo_dir: Path, prefix: str) -> Path:
    rows = [json.loads(line) for line in (demo_dir / "seed.jsonl").read_text().splitlines()]
    ids = set(table.column("user_id").to_pylist())
    path.write_text("".join(json.dumps({"user_id": prefix + r["user_id"], "audience": r["audience"]}) + "\n" for r in rows if prefix + r["user_id"] in ids))
    return path


def _owners(ledger: Path, tables, strict: str) -> dict[str, str]:
    """Two owners' budgets; ``strict`` allows neither non-private nor trusted runs."""
    for name in ("a", "b"):
        loose = name != strict
        grant(ledger, tables[f"{name}_path"], 100.0, allow_non_private=loose, allow_trusted_evaluation=loose)
    return {name: find_budget(Ledger(ledger), users_key(tables[name].column("user_id"))).fingerprint for name in ("a", "b")}


def test_a_union_of_two_owners_tables_is_charged_on_both_under_the_tighter_rules(demo_dir, tmp_path):
    tables = _tables(demo_dir, tmp_path)
    union = tmp_path / "union.parquet"
    pq.write_table(pa.concat_tables([tables["a"], tables["b"]]), union)  # A 60%, B 40%
    seed = _seed_of(tables["b"], tmp_path / "seed_b.jsonl", demo_dir, "b")
    ledger = tmp_path / "out" / "privacy_ledger.sqlite"
    budgets = _owners(ledger, tables, strict="b")
    match = find_budget(Ledger(ledger), users_key(pq.read_table(union).column("user_id")))
    assert (match.fingerprint, match.also) == (budgets["a"], (budgets["b"],)) and match.share == pytest.approx(0.6, abs=0.01)
    assert not match.rules.allow_non_private and not match.rules.allow_trusted_evaluation

    def cfg(*overrides):
        return make_cfg(demo_dir, tmp_path / "out", f"data.publisher_path={union}", f"data.seed_path={seed}", *overrides, owner=False)

    with pytest.raises(ConfigError, match="not allowed by the data owners' rules") as err:
        run(cfg("privacy.enabled=false", "trusted_evaluation=true"))
    assert err.value.key == "trusted_evaluation"
    assert all(s.runs == 0 for s in Ledger(ledger).status())
    run(cfg("privacy.target_epsilon=1"))  # a DP run both owners allow: one entry on each budget
    entries = {s.fingerprint: Ledger(ledger).entries(s.fingerprint) for s in Ledger(ledger).status()}
    (home,), (copy,) = entries[budgets["a"]], entries[budgets["b"]]
    assert home["status"] == copy["status"] == "spent" and copy["parent"] == home["id"]
    assert copy["spent_epsilon"] == home["spent_epsilon"] > 1 and copy["events"] == home["events"]
    # The union joined A's data less B's users: B's own table is still B's alone.
    again = find_budget(Ledger(ledger), users_key(tables["b"].column("user_id")))
    assert (again.fingerprint, again.also) == (budgets["b"], ())


def test_another_budgets_sketched_users_plus_most_of_ones_own_stay_ones_own(demo_dir, tmp_path):
    tables = _tables(demo_dir, tmp_path)
    a, b = tables["a"], tables["b"]
    sketched = np.argsort(user_hashes(b.column("user_id")))[:SKETCH_SIZE]
    keep = np.random.default_rng(0).random(a.num_rows) < 0.978
    crafted = pa.concat_tables([b.take(pa.array(sketched)), a.filter(pa.array(keep))])
    ledger = tmp_path / "out" / "privacy_ledger.sqlite"
    budgets = _owners(ledger, tables, strict="a")
    match = find_budget(Ledger(ledger), users_key(crafted.column("user_id")))
    assert match.fingerprint == budgets["a"] and match.also == (budgets["b"],)
    assert not match.rules.allow_trusted_evaluation and not match.rules.allow_non_private
    # The audit's run: non-private and trusted under B's loose rules, logging A's exact counts.
    pq.write_table(crafted, tmp_path / "crafted.parquet")
    cfg = make_cfg(
        demo_dir, tmp_path / "out", f"data.publisher_path={tmp_path / 'crafted.parquet'}", "privacy.enabled=false", "trusted_evaluation=true", owner=False
    )
    with pytest.raises(ConfigError, match="not allowed by the data owners' rules"):
        run(cfg)
    assert all(s.runs == 0 for s in Ledger(ledger).status())


def test_attach_refuses_a_table_mostly_another_budgets_or_none_of_its_own(demo_dir, tmp_path, capsys):
    tables = _tables(demo_dir, tmp_path)
    ledger = tmp_path / "out" / "privacy_ledger.sqlite"
    budgets = _owners(ledger, tables, strict="b")
    mostly_b = tmp_path / "mostly_b.parquet"
    pq.write_table(pa.concat_tables([tables["b"], tables["a"].slice(0, 300)]), mostly_b)
    strangers = tables["a"].set_column(0, "user_id", pc.binary_join_element_wise("z", tables["a"].column("user_id"), ""))
    pq.write_table(strangers, tmp_path / "z.parquet")
    before = Ledger(ledger).status()
    for path, why in ((mostly_b, f"mostly covered by budget {budgets['b'][:12]}"), (tmp_path / "z.parquet", "share no user with budget")):
        with pytest.raises(SystemExit) as exit_info:
            budget_main(["--ledger", str(ledger), "attach", budgets["a"][:12], "--publisher", str(path)])
        assert exit_info.value.code == 2 and why in capsys.readouterr().err
    assert Ledger(ledger).status() == before
