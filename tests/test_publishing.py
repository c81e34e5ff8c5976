"""Publishing an export: overwrite replaces only what a previous export wrote, and publishing is
atomic and exclusive, with real files and real concurrent processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.export.output import MARKER, StagedOutput, check_output_dir, foreign_entry
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run as train
from tests.conftest import files_under, make_cfg
from tests.test_export import export_cfg

EXPORT = "import sys; from lookalike.export.app import cli; sys.argv = ['lookalike-export', *sys.argv[1:]]; cli()"


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A centroid model (no training loop: the quickest model to export)."""
    out = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(demo_dir, out, "model=centroid", "owner.epsilon=50")
    train(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    return out, logged.info.run_id


def staged(destination: Path, overwrite: bool = False, audience: str = "luxury") -> StagedOutput:
    out = StagedOutput(destination, overwrite)
    out.write_segment(audience, 10, pa.array(["u1", "u2"]), np.array([0.9, 0.8]))
    (out.stage / "report.json").write_text(json.dumps({"audience": audience}))
    return out


def exports_spent(out: Path) -> set[int]:
    ledger = Ledger(out / "privacy_ledger.sqlite")
    return {e["id"] for e in ledger.entries(ledger.status()[0].fingerprint) if e["kind"] == "export" and e["status"] == "spent"}


def test_overwrite_refuses_a_folder_a_training_run_wrote_into(demo_dir, trained, tmp_path):
    """Export to exp1, train with paths.output_dir=exp1, export again with overwrite: the
    ledger with its spent entry, the MLflow store and the runs were deleted."""
    exp1 = tmp_path / "exp1"
    export(export_cfg(demo_dir, trained, exp1, "export.audience_size.bins=[10]"))
    train(make_cfg(demo_dir, exp1, "model=centroid", "owner.epsilon=50"))
    before = files_under(exp1)
    assert {"privacy_ledger.sqlite", "mlflow.db"} <= {p.name for p in before}
    with pytest.raises(ConfigError, match=r"exp1' holds files no export wrote \('[^']+'\); export.overwrite=true only replaces a previous export") as err:
        export(export_cfg(demo_dir, trained, exp1, "export.overwrite=true", "export.audience_size.bins=[5]"))
    assert "\n" not in str(err.value) and files_under(exp1) == before
    assert [s.runs for s in Ledger(exp1 / "privacy_ledger.sqlite").status()] == [1]


def test_overwrite_checks_every_file_of_the_previous_export(tmp_path):
    target = tmp_path / "seg"
    staged(target).publish()
    assert foreign_entry(target) is None
    (target / "audience=luxury" / "size=10" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files no export wrote \('audience=luxury/size=10/notes.txt'\)"):
        check_output_dir(target, overwrite=True)
    (target / "audience=luxury" / "size=10" / "notes.txt").unlink()
    (target / MARKER).write_text("written by lookalike-export\n")  # an older export's marker: no manifest
    with pytest.raises(ConfigError, match="without a manifest"):
        check_output_dir(target, overwrite=True)


def test_a_folder_filled_after_the_check_is_never_replaced(tmp_path):
    target = tmp_path / "seg"
    check_output_dir(target, overwrite=False)
    out = staged(target)
    target.mkdir()
    (target / "theirs.txt").write_text("precious")
    with pytest.raises(ConfigError, match="export.output_dir.*filled by another process during this export.*nothing was published"):
        out.publish()
    out.discard()
    assert files_under(target) == [target / "theirs.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["seg"]


def test_overwrite_keeps_what_was_added_after_the_check(tmp_path):
    target = tmp_path / "seg"
    staged(target).publish()
    check_output_dir(target, overwrite=True)
    out = staged(target, overwrite=True, audience="sports")
    (target / "mlflow.db").write_text("a store")
    with pytest.raises(ConfigError, match=r"holds files no export wrote \('mlflow.db'\), added while this export ran; nothing was published"):
        out.publish()
    out.discard()
    assert (target / "mlflow.db").read_text() == "a store" and (target / "audience=luxury").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg"]  # nothing set aside left behind


def test_a_linked_output_folder_stays_a_link_and_leaves_nothing_aside(tmp_path):
    (tmp_path / "store" / "exp").mkdir(parents=True)
    link = tmp_path / "exp"
    link.symlink_to(Path("store") / "exp")
    staged(link).publish()
    check_output_dir(link, overwrite=True)
    staged(link, overwrite=True, audience="sports").publish()
    assert link.is_symlink() and (link / "audience=sports").is_dir() and not (link / "audience=luxury").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "store"] and sorted(p.name for p in (tmp_path / "store").iterdir()) == ["exp"]


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_three_exports_into_one_new_folder_publish_exactly_one(demo_dir, trained, tmp_path):
    """Two of three published and the later replaced the earlier. Each process has its own copy
    of the MLflow store and ledger, so they share nothing but the destination."""
    target = tmp_path / "seg"
    copies = [tmp_path / f"copy{i}" for i in range(3)]
    for copy in copies:
        shutil.copytree(trained[0], copy)
    earlier = exports_spent(trained[0])  # by the tests above, on the same store and ledger
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                EXPORT,
                f"paths.output_dir={copy}",
                f"data.publisher_path={demo_dir / 'publisher'}",
                f"data.seed_path={demo_dir / 'seed.jsonl'}",
                f"export.model={trained[1]}",
                f"export.output_dir={target}",
                "export.audience_size.bins=[10]",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for copy in copies
    ]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(code for code, _ in results) == [0, 2, 2], results
    for code, err in results:
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 0 or (len(lines) == 1 and lines[0].startswith("lookalike-export: error: config 'export.output_dir'")), err
    # The published folder is whole and from one run: exactly its manifest, and the winner's report.
    manifest = json.loads((target / MARKER).read_text())
    assert {p.relative_to(target).as_posix() for p in files_under(target)} == {*manifest["files"], MARKER}
    report = json.loads((target / "report.json").read_text())
    spent = [exports_spent(copy) - earlier for copy in copies]
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    assert spent[winner] == {report["privacy"]["ledger_entry_id"]} and sum(map(len, spent)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seg")]
