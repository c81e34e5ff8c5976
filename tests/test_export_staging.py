"""Export staging (export/output.py): stages of killed exports beside the output folder are
cleared, and whatever else is there is checked before the export reserves anything."""

from __future__ import annotations

import socket

import pytest
from mlflow.tracking import MlflowClient

from lookalike.export.app import run as export
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run as train
from tests.conftest import make_cfg
from tests.test_export import export_cfg


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """One DP model on the small demo data, its MLflow store and ledger."""
    out = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(demo_dir, out, "trainer.epochs=1", "privacy.target_epsilon=2")
    train(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    return out, logged.info.run_id


def test_a_killed_exports_staging_folder_is_cleaned_up(demo_dir, trained, tmp_path):
    target = tmp_path / "segments"
    stale = tmp_path / ".segments.tmp-deadbeef"
    (stale / "audience=luxury").mkdir(parents=True)
    (stale / ".lookalike-export").write_text(f"{2**22 + 12345}@{socket.gethostname()}")  # no such process
    export(export_cfg(demo_dir, trained, target, "export.audience_size.bins=[10]"))
    assert not stale.exists() and (target / ".lookalike-export").is_file()
    assert not list(tmp_path.glob(".segments.*"))


def test_garbage_staging_markers_are_left_alone_or_cleared_never_a_traceback(demo_dir, trained, tmp_path):
    """A marker of bytes that are not UTF-8, or of digits int() or os.kill refuses, failed the
    export after its reservation with a traceback and kept it charged."""
    host = socket.gethostname()
    markers = {"bytes": b"\xff\xfe\x00garbage", "superscript": f"\u00b2@{host}".encode(), "huge": f"{10**30}@{host}".encode(), "folder": None}
    for name, marker in markers.items():
        stage = tmp_path / f".segments.tmp-{name}"
        stage.mkdir()
        if marker is None:
            (stage / ".lookalike-export").mkdir()
        else:
            (stage / ".lookalike-export").write_bytes(marker)
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    (before,) = ledger.status()
    report = export(export_cfg(demo_dir, trained, tmp_path / "segments", "export.audience_size.bins=[10]"))
    assert report["privacy"]["ledger_entry_id"] is not None and (tmp_path / "segments" / "report.json").is_file()
    # Not ours to judge: left as they were; a process id no process can have: a killed export's.
    assert sorted(p.name for p in tmp_path.glob(".segments.tmp-*")) == [".segments.tmp-bytes", ".segments.tmp-folder", ".segments.tmp-superscript"]
    (after,) = ledger.status()
    assert after.runs == before.runs + 1 and after.reserved_epsilon == before.reserved_epsilon == 0  # the export was charged once, nothing held
