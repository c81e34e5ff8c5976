"""No password in a setting or on the command line (issue 22 item 5): a URL with one is refused in
one line saying where it goes instead, before Hydra parses (and would echo) the argument or
writes multirun.yaml; the ledger's URL, password and all, comes from LOOKALIKE_LEDGER_URL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.errors import ConfigError
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.credentials import has_password
from lookalike.training.config import train_config
from lookalike.training.train import run
from tests.conftest import files_under, make_cfg

SECRET = "s3cret"
COMMANDS = {
    "lookalike-train": "from lookalike.training.train import cli",
    "lookalike-export": "from lookalike.export.app import cli",
    "lookalike-budget": "from lookalike.cli.budget import main as cli",
}


@pytest.mark.parametrize(
    ("command", "args", "key", "advice"),
    [
        # well-formed, in a sweep: Hydra wrote it to multirun.yaml
        ("lookalike-train", ["-m", "ledger.path=postgresql+psycopg://alice:s3cret@db.example/ledger"], "ledger.path", "LOOKALIKE_LEDGER_URL"),
        # a '#': Hydra's lexer stops there and echoes the override
        ("lookalike-train", ["mlflow.tracking_uri=http://alice:s3cr#et@127.0.0.1:9"], "mlflow.tracking_uri", "MLFLOW_TRACKING_PASSWORD"),
        # a quote: Hydra's parse error, echoing the override
        ("lookalike-export", ["export.model=latest", "ledger.path=postgresql://alice:s3cr'et@db/ledger"], "ledger.path", "PGPASSFILE"),
        # any setting, and a secret as a query parameter
        ("lookalike-export", ["+data.extra=https://bob@store.example/x?api_token=s3cret"], "data.extra", "environment"),
        ("lookalike-budget", ["--ledger", "postgresql+psycopg://alice:s3cret@db.example/ledger", "--json"], "--ledger", "LOOKALIKE_LEDGER_URL"),
    ],
)
def test_a_password_on_the_command_line_is_refused_before_it_is_parsed(tmp_path, command, args, key, advice):
    code = f"import sys; {COMMANDS[command]}; sys.argv = ['{command}', *sys.argv[1:]]; cli()"
    out = tmp_path / "out"
    overrides = [] if command == "lookalike-budget" else [f"paths.output_dir={out}", f"hydra.run.dir={out / 'run'}", f"hydra.sweep.dir={out / 'sweep'}"]
    proc = subprocess.run([sys.executable, "-c", code, *args, *overrides], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith(f"{command}: error: config '{key}': a password in a URL") and advice in lines[0]
    assert "s3cr" not in lines[0] and "et@" not in lines[0]
    assert files_under(out) == [] and files_under(tmp_path / "outputs") == []  # no multirun.yaml, no run folder, no store


def test_a_password_in_a_config_file_is_refused_too(demo_dir, tmp_path):
    configs = tmp_path / "my_configs" / "experiment"
    configs.mkdir(parents=True)
    (configs / "leaky.yaml").write_text("# @package _global_\nmlflow:\n  tracking_uri: https://bob:s3cret@mlflow.example\n")
    cfg = make_cfg(demo_dir, tmp_path / "out", f"hydra.searchpath=[file://{configs.parent}]", "experiment=leaky", owner=False)
    with pytest.raises(ConfigError) as err:
        train_config(cfg)
    assert err.value.key == "mlflow.tracking_uri" and SECRET not in str(err.value) and "MLFLOW_TRACKING_USERNAME" in str(err.value)


def test_passwords_the_masking_missed_are_found():
    for url in ("http://alice:pa#ss@host", "http://alice:pa?ss@host/x", "postgresql://u:p@ss/w@db/l", "http://:pw@host", "postgresql://u@db/l?sslpassword=x"):
        assert has_password(url), url
    for url in ("sqlite:////data/a:b@c/ledger.sqlite", "http://127.0.0.1:5000", "postgresql+psycopg://lookalike@db/ledger?sslkey=/k.pem", "models:/m/1"):
        assert not has_password(url), url
    # a port, then an '@' in the path: a password only where a setting names a server
    assert has_password("http://host:5000/api@v2") and not has_password("http://host:5000/api@v2", slash_in_password=False)


def test_the_ledger_comes_from_lookalike_ledger_url_password_and_all(ledger_location, demo_dir, tmp_path, monkeypatch, capfd):
    # PostgreSQL's test cluster trusts its socket: the password travels with the URL, unchecked.
    url = ledger_location.replace("postgres@", f"postgres:{SECRET}@", 1)
    monkeypatch.setenv("LOOKALIKE_LEDGER_URL", url)
    budget_main(["create", "--publisher", str(demo_dir / "publisher"), "--epsilon", "100", "--min-matching-seed-size", "25"])
    out = tmp_path / "out"
    run(make_cfg(demo_dir, out, "trainer.epochs=1", owner=False))
    (status,) = Ledger(url).status()
    assert status.runs == 1 and status.spent_epsilon > 0 and not (out / "privacy_ledger.sqlite").exists()
    with pytest.raises(ConfigError) as err:  # the operator's override no longer picks another ledger
        train_config(make_cfg(demo_dir, out, f"ledger.path={tmp_path / 'mine.sqlite'}", owner=False))
    assert err.value.key == "ledger.path" and "is set by LOOKALIKE_LEDGER_URL; remove the override" in str(err.value)
    with pytest.raises(SystemExit):
        budget_main(["--ledger", str(tmp_path / "mine.sqlite"), "--json"])
    shown = capfd.readouterr()
    assert "--ledger" in shown.err and "LOOKALIKE_LEDGER_URL" in shown.err
    assert SECRET not in shown.out + shown.err and all(SECRET.encode() not in f.read_bytes() for f in files_under(out))  # MLflow store included


def test_a_room_takes_its_ledger_from_lookalike_ledger_url_or_its_file_not_both(demo_dir, tmp_path, monkeypatch):
    room, ledger = tmp_path / "room.yaml", f"sqlite:///{tmp_path / 'room' / 'ledger.sqlite'}"
    room.write_text(f"export:\n  shard:\n    parts_dir: {tmp_path / 'parts'}\n")
    monkeypatch.setenv("LOOKALIKE_ROOM", str(room))
    monkeypatch.setenv("LOOKALIKE_LEDGER_URL", ledger)
    assert train_config(make_cfg(demo_dir, tmp_path / "out", owner=False)).ledger.path == ledger
    with pytest.raises(ConfigError, match="ledger.path.*is set by LOOKALIKE_LEDGER_URL"):
        train_config(make_cfg(demo_dir, tmp_path / "out", f"ledger.path={tmp_path / 'mine.sqlite'}", owner=False))
    room.write_text(f"ledger:\n  path: {tmp_path / 'other.sqlite'}\nexport:\n  shard:\n    parts_dir: {tmp_path / 'parts'}\n")
    for value, says in ((ledger, "sets ledger.path too: keep one of them"), ("ledger.sqlite", "relative path")):
        monkeypatch.setenv("LOOKALIKE_LEDGER_URL", value)
        with pytest.raises(ConfigError) as err:
            train_config(make_cfg(demo_dir, tmp_path / "out", owner=False))
        assert err.value.key == "LOOKALIKE_LEDGER_URL" and says in str(err.value)
        room.write_text(f"export:\n  shard:\n    parts_dir: {tmp_path / 'parts'}\n")
