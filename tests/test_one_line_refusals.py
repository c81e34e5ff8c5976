"""Inputs and conditions that used to end in a traceback, each now one line and exit status 2:
a list-of-lists column, a full disk (checkpoint, export staging), an output path no file system
takes, a preview epsilon too small to count runs with, and a model URL outside MLflow."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.errors import DataError
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import run
from tests.conftest import files_under, grant, untouched

TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
EXPORT = "import sys; from lookalike.export.app import cli; sys.argv = ['lookalike-export', *sys.argv[1:]]; cli()"


def command(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    # MLflow announces creating its store on stderr; nothing else may be there
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO mlflow." not in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr[-3000:]
    return lines[0]


@contextmanager
def full_filesystem(folder: Path, room: int = 0):
    """A real 1 MiB tmpfs mounted at ``folder``, filled up but for ``room`` bytes."""
    if os.geteuid() != 0:
        pytest.skip("a full file system is a small tmpfs, and mounting one needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):  # unbuffered: the write that finds the disk full raises here
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.truncate(filler, max(filler.stat().st_size - room, 0))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_list_of_lists_column_is_refused_naming_it(cfg_factory, demo_dir, tmp_path):
    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table()
    nested = pa.array([[["a", "b"], ["c"]]] * table.num_rows, type=pa.list_(pa.list_(pa.string())))
    pq.write_table(table.append_column("visits", nested), tmp_path / "nested.parquet")
    cfg = cfg_factory(f"data.publisher_path={tmp_path / 'nested.parquet'}")
    with pytest.raises(DataError, match=r"column 'visits' has type list<.*list<.*string>>: use a list of strings .*data.exclude_columns=\[visits\]") as err:
        run(cfg)
    assert "\n" not in str(err.value)
    untouched(tmp_path / "out", cfg.ledger.path)


def train_args(demo_dir: Path, out: Path, *extra: str) -> list[str]:
    data = [f"data.publisher_path={demo_dir / 'publisher'}", f"data.seed_path={demo_dir / 'seed.jsonl'}"]
    return ["debug=default", f"paths.output_dir={out}", *data, "privacy.target_epsilon=1", "trusted_evaluation=true", *extra]


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_run_stays_charged(demo_dir, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    grant(out / "privacy_ledger.sqlite", demo_dir / "publisher")
    with full_filesystem(run_dir / "checkpoints") as checkpoints:
        proc = command(TRAIN, *train_args(demo_dir, out, f"hydra.run.dir={run_dir}"))
        line = one_line(proc, "lookalike-train")
        assert f"checkpoint '{checkpoints / 'last.pt'}': no space left on device" in line
        assert sorted(p.name for p in checkpoints.iterdir()) == ["filler"]  # no partial last.pt.tmp left
    (status,) = Ledger(out / "privacy_ledger.sqlite").status()
    assert status.runs == 1 and status.reserved_epsilon > 0  # DP steps were taken: the reservation stays


@pytest.mark.parametrize("room", [0, 8192], ids=["no room for the stage", "room for the stage, not the segments"])
def test_a_full_disk_while_staging_an_export_publishes_nothing_and_charges_nothing(cfg_factory, demo_dir, tmp_path, room):
    cfg = cfg_factory("privacy.target_epsilon=1", "trusted_evaluation=true")
    run(cfg)
    before = Ledger(cfg.ledger.path).status()[0]
    args = [
        f"paths.output_dir={cfg.paths.output_dir}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
        f"ledger.path={cfg.ledger.path}",
        "export.model=latest",
        "export.audience_size.bins=[10,50]",
    ]
    with full_filesystem(tmp_path / "disk", room) as disk:
        # not trusted: the export reserves its report's epsilon, which must come back
        proc = command(EXPORT, *args, f"export.output_dir={disk / 'segments'}")
        line = one_line(proc, "lookalike-export")
        assert f"export.output_dir '{disk / 'segments'}': no space left on device" in line and "nothing was published" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no stage, no segments
    ledger = Ledger(cfg.ledger.path)
    after = ledger.status()[0]
    assert (after.reserved_epsilon, after.charged_epsilon) == (0, before.charged_epsilon)
    # The stage is made before the reservation: no room for it, nothing reserved; room for it but
    # not for the segments, the export's reservation is given back.
    assert [e["status"] for e in ledger.entries(after.fingerprint)[before.runs :]] == ([] if room == 0 else ["released"])


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_an_output_path_no_file_system_takes_is_refused_before_any_work(demo_dir, tmp_path):
    long = tmp_path / ("x" * 300)
    grant(tmp_path / "privacy_ledger.sqlite", demo_dir / "publisher")
    line = one_line(command(TRAIN, *train_args(demo_dir, long)), "lookalike-train")
    assert line.startswith("lookalike-train: error: config 'paths.output_dir': has a folder or file name of 300 bytes")
    export = [f"paths.output_dir={tmp_path}", f"data.publisher_path={demo_dir / 'publisher'}", "export.model=latest", f"export.output_dir={long}"]
    line = one_line(command(EXPORT, *export, f"data.seed_path={demo_dir / 'seed.jsonl'}"), "lookalike-export")
    assert line.startswith("lookalike-export: error: config 'export.output_dir': has a folder or file name of 300 bytes")
    assert [p.name for p in files_under(tmp_path)] == ["privacy_ledger.sqlite"]  # nothing made, the long folder neither


def test_a_preview_epsilon_too_small_to_count_runs_with_is_one_line(tmp_path, demo_dir, capsys):
    grant(tmp_path / "ledger.sqlite", demo_dir / "publisher")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        budget_main(["--ledger", str(tmp_path / "ledger.sqlite"), "preview", "--epsilon", "5e-324"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("lookalike-budget: error: --epsilon 4.94066e-324 is too small to mean anything")


@pytest.mark.parametrize("model", ["http://models.example/lookalike", "s3://bucket/model", "HTTPS://x/y"])
def test_a_model_outside_mlflow_and_this_machine_is_refused(demo_dir, tmp_path, model):
    args = [f"paths.output_dir={tmp_path}", f"data.publisher_path={demo_dir / 'publisher'}", f"data.seed_path={demo_dir / 'seed.jsonl'}"]
    line = one_line(command(EXPORT, *args, f"export.model={model}", f"export.output_dir={tmp_path / 'segments'}"), "lookalike-export")
    assert line.startswith(f"lookalike-export: error: config 'export.model': '{model}' is no model of the tracking store")
    assert files_under(tmp_path) == []
