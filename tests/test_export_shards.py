"""Sharded export: two shards and a merge write exactly the segments one process writes, and
the same exact (trusted) report; the release is charged once; broken part sets are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.data.publisher import open_publisher
from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.export.scoring import row_group_batches
from lookalike.privacy.ledger import Ledger
from tests.test_export import export_cfg, seed_ids, trained  # noqa: F401  (fixture)

BINS = "export.audience_size.bins=[5,10,50]"


def segments(target):
    return {(a, b): pq.read_table(target / f"audience={a}" / f"size={b}").to_pylist() for a in ("luxury", "sports") for b in (5, 10, 50)}


def test_two_shards_merge_to_the_single_process_export(demo_dir, trained, tmp_path):  # noqa: F811
    single = tmp_path / "single"
    expected = export(export_cfg(demo_dir, trained, single, BINS, "trusted_evaluation=true"))
    parts, merged = tmp_path / "parts", tmp_path / "merged"
    shared = [BINS, "trusted_evaluation=true", f"export.shard.parts_dir={parts}"]
    entries_before = len(Ledger(trained[0] / "privacy_ledger.sqlite").entries(expected_fingerprint(trained)))
    for index in (0, 1):
        done = export(export_cfg(demo_dir, trained, merged, *shared, f"export.shard.index={index}", "export.shard.count=2"))
        assert done["shard"] == index and not merged.exists()  # a shard releases nothing
    assert sorted(p.name for p in parts.iterdir()) == ["shard-0000-of-0002", "shard-0001-of-0002"]
    report = export(export_cfg(demo_dir, trained, merged, *shared, "export.shard.merge=true"))
    got, want = segments(merged), segments(single)
    for key in want:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(got[key], want[key])) if a != b]
        assert not diff, (key, len(diff), diff[:3])
    assert report["audiences"] == expected["audiences"] and report["population"] == expected["population"] == 4000
    assert list(parts.iterdir()) == []  # the seed-derived parts are gone after the release
    assert len(Ledger(trained[0] / "privacy_ledger.sqlite").entries(expected_fingerprint(trained))) == entries_before


def expected_fingerprint(trained):  # noqa: F811
    return Ledger(trained[0] / "privacy_ledger.sqlite").status()[0].fingerprint


def test_dp_merge_is_charged_once_and_incomplete_or_foreign_parts_are_refused(demo_dir, trained, tmp_path):  # noqa: F811
    parts, target = tmp_path / "parts", tmp_path / "out"
    shared = [BINS, f"export.shard.parts_dir={parts}"]
    export(export_cfg(demo_dir, trained, target, *shared, "export.shard.index=1", "export.shard.count=2"))
    with pytest.raises(ConfigError, match=r"holds shards \[1\] of \[2\]"):
        export(export_cfg(demo_dir, trained, target, *shared, "export.shard.merge=true"))
    export(export_cfg(demo_dir, trained, target, *shared, "export.shard.index=0", "export.shard.count=2"))
    with pytest.raises(ConfigError, match="scored with another model, data or audiences"):
        export(export_cfg(demo_dir, trained, target, "export.audiences=[luxury]", *shared, "export.shard.merge=true"))
    assert not target.exists()
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    before = [e for e in ledger.entries(expected_fingerprint(trained)) if e["kind"] == "export"]
    report = export(export_cfg(demo_dir, trained, target, *shared, "export.shard.merge=true"))
    after = [e for e in ledger.entries(expected_fingerprint(trained)) if e["kind"] == "export"]
    assert len(after) == len(before) + 1 and after[-1]["spent_epsilon"] == 0.5 and report["privacy"]["noise_std"] > 0
    with pytest.raises(ConfigError, match="export.shard.index"):
        export(export_cfg(demo_dir, trained, target, *shared, "export.shard.index=2", "export.shard.count=2"))


def numbers(value) -> list:
    """Every number anywhere in a parsed JSON document."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_a_shard_reads_no_seed_and_its_part_is_every_users_score_only(demo_dir, trained, tmp_path):  # noqa: F811
    """The operator picks parts_dir and reads it: a part must be a function of the DP model and
    the publisher table alone, the same for a seed user as for anyone else, and cost nothing."""
    parts, target = tmp_path / "parts", tmp_path / "out"
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    before = ledger.entries(expected_fingerprint(trained))
    no_seed = f"data.seed_path={tmp_path / 'no-such-seed.jsonl'}"  # a shard must not even open it
    for index in (0, 1):
        export(export_cfg(demo_dir, trained, target, BINS, no_seed, f"export.shard.parts_dir={parts}", f"export.shard.index={index}", "export.shard.count=2"))
    assert not target.exists() and ledger.entries(expected_fingerprint(trained)) == before
    seed = seed_ids(demo_dir, "luxury") | seed_ids(demo_dir, "sports")
    publisher = open_publisher(demo_dir / "publisher")
    seen = []
    for index in (0, 1):
        part = parts / f"shard-{index:04d}-of-0002"
        rows = [b.column("user_id").cast(pa.string()) for b in row_group_batches(publisher, ["user_id"], None, 65536, (index, 2))]
        users = sorted(pa.concat_arrays(rows).to_pylist())
        assert set(users) & seed  # the check below is not vacuous: seed users are in this share
        for file in sorted(part.rglob("*.parquet")):
            table = pq.read_table(file)
            strings = [c for c, t in zip(table.column_names, table.schema.types) if not pa.types.is_floating(t)]
            # One id column, each of the share's users exactly once; every other column a score.
            assert len(strings) == 1 and sorted(table.column(strings[0]).to_pylist()) == users, file.name
            assert all(table.column(c).null_count == 0 for c in table.column_names)
        meta = json.loads((part / "part.json").read_text())
        assert set(meta) == {"signature", "users"} and meta["users"] == len(users)
        # No seed id and no count but public row counts (this share's, the table's).
        assert not seed & set(json.dumps(meta).replace('"', " ").split())
        assert set(numbers(meta)) <= {len(users), 4000}, numbers(meta)
        seen += users
    assert sorted(seen) == sorted(publisher.to_table(columns=["user_id"]).column("user_id").to_pylist())
    # The merge (with the seed) makes the release from these parts, charged once.
    report = export(export_cfg(demo_dir, trained, target, BINS, f"export.shard.parts_dir={parts}", "export.shard.merge=true"))
    after = ledger.entries(expected_fingerprint(trained))
    assert report["population"] == 4000 and len(after) == len(before) + 1 and after[-1]["kind"] == "export"


@pytest.mark.slow
def test_torchrun_ranks_are_shards_and_rank_0_releases(demo_dir, trained, tmp_path):  # noqa: F811
    single = tmp_path / "single"
    export(export_cfg(demo_dir, trained, single, BINS, "trusted_evaluation=true"))
    out, run_id = trained
    target = tmp_path / "ranks"
    args = [
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        f"export.model={run_id}",
        f"export.output_dir={target}",
        BINS,
        "trusted_evaluation=true",
        f"export.shard.parts_dir={tmp_path / 'parts'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lookalike.export.app", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert segments(target) == segments(single)
    shutil.rmtree(tmp_path / "parts", ignore_errors=True)
    # The same export again into the now non-empty folder: refused before any rank scores.
    again = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lookalike.export.app", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode != 0 and "is not empty; choose another folder or set export.overwrite=true" in again.stderr
    assert not (tmp_path / "parts").exists() and segments(target) == segments(single)
