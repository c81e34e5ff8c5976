"""Sharded export: two shards and a merge write exactly the segments one process writes, and
the same exact (trusted) report; the release is charged once; broken part sets are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.privacy.ledger import Ledger
from tests.test_export import export_cfg, trained  # noqa: F401  (fixture)

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
    with pytest.raises(ConfigError, match="scored with other settings"):
        export(export_cfg(demo_dir, trained, target, "export.audience_size.bins=[5,10]", f"export.shard.parts_dir={parts}", "export.shard.merge=true"))
    assert not target.exists()
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    before = [e for e in ledger.entries(expected_fingerprint(trained)) if e["kind"] == "export"]
    report = export(export_cfg(demo_dir, trained, target, *shared, "export.shard.merge=true"))
    after = [e for e in ledger.entries(expected_fingerprint(trained)) if e["kind"] == "export"]
    assert len(after) == len(before) + 1 and after[-1]["spent_epsilon"] == 0.5 and report["privacy"]["noise_std"] > 0
    with pytest.raises(ConfigError, match="export.shard.index"):
        export(export_cfg(demo_dir, trained, target, *shared, "export.shard.index=2", "export.shard.count=2"))


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
