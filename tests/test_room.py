"""The room's settings (the ledger, so the owners' budgets and rules, and the export's shard parts)
come from the room file that LOOKALIKE_ROOM names, never from the operator's overrides; without
the variable, the operator picks them as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from lookalike.cli.budget import main as budget_main
from lookalike.data.features import CategoricalFeature, FeatureSpec, NumericFeature
from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.export.config import export_config
from lookalike.model.bundle import save_bundle
from lookalike.model.config import ModelConfig
from lookalike.model.towers import TwoTower
from lookalike.paths import CONFIG_DIR
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import load_logged_model, log_model
from lookalike.training.config import train_config
from lookalike.training.train import run
from tests.conftest import files_under, grant, make_cfg


@pytest.fixture
def room(demo_dir, tmp_path, monkeypatch) -> dict[str, Path]:
    """A room file with the owners' ledger (a budget for the demo publisher) and a parts folder,
    named by LOOKALIKE_ROOM; and a ledger the operator made for the same data with loose rules."""
    folder = tmp_path / "room"
    folder.mkdir()
    mine = tmp_path / "mine.sqlite"
    grant(mine, demo_dir / "publisher", 1000.0)  # the operator's own ledger, made before the room is set
    file = folder / "room.yaml"
    file.write_text(f"ledger:\n  path: {folder / 'ledger.sqlite'}\nexport:\n  shard:\n    parts_dir: {folder / 'parts'}\n")
    monkeypatch.setenv("LOOKALIKE_ROOM", str(file))
    grant(folder / "ledger.sqlite", demo_dir / "publisher", 10.0)  # the owners, through the room's ledger
    return {"file": file, "ledger": folder / "ledger.sqlite", "parts": folder / "parts", "mine": mine}


def runs_in(ledger: Path) -> list[int]:
    return [s.runs for s in Ledger(ledger).status()]


def export_compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="export", overrides=["export.model=some-run", *overrides])


def test_a_run_charges_the_rooms_ledger(demo_dir, tmp_path, room):
    out = tmp_path / "out"
    run(make_cfg(demo_dir, out, "privacy.target_epsilon=1", owner=False))
    assert runs_in(room["ledger"]) == [1]
    assert runs_in(room["mine"]) == [0]
    assert not (out / "privacy_ledger.sqlite").exists()


def test_the_operators_ledger_is_refused_and_nothing_happens(demo_dir, tmp_path, room):
    out = tmp_path / "out"
    before = room["mine"].read_bytes()
    cfg = make_cfg(demo_dir, out, f"ledger.path={room['mine']}", owner=False)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.key == "ledger.path" and "\n" not in str(err.value)
    assert f"room file '{room['file']}' (LOOKALIKE_ROOM)" in str(err.value) and "remove the override" in str(err.value)
    assert files_under(out) == []  # no MLflow store, no run folder, no ledger
    assert room["mine"].read_bytes() == before and runs_in(room["mine"]) == [0]
    assert runs_in(room["ledger"]) == [0]


def test_an_experiment_file_cannot_move_the_ledger_either(demo_dir, tmp_path, room):
    configs = tmp_path / "my_configs" / "experiment"
    configs.mkdir(parents=True)
    (configs / "mine.yaml").write_text(f"# @package _global_\nledger:\n  path: {room['mine']}\n")
    cfg = make_cfg(demo_dir, tmp_path / "out", f"hydra.searchpath=[file://{configs.parent}]", "experiment=mine", owner=False)
    with pytest.raises(ConfigError, match="ledger.path.*LOOKALIKE_ROOM"):
        train_config(cfg)
    # the room's own value is no override
    assert train_config(make_cfg(demo_dir, tmp_path / "out", f"ledger.path={room['ledger']}", owner=False)).ledger.path == str(room["ledger"])


def test_export_takes_the_rooms_ledger_and_parts_and_refuses_others(tmp_path, room):
    typed = export_config(export_compose(f"paths.output_dir={tmp_path / 'out'}"))
    assert (typed.ledger.path, typed.export.shard.parts_dir) == (str(room["ledger"]), str(room["parts"]))
    mine = tmp_path / "my_parts"
    for override, key in ((f"export.shard.parts_dir={mine}", "export.shard.parts_dir"), (f"ledger.path={room['mine']}", "ledger.path")):
        with pytest.raises(ConfigError) as err:
            export(export_compose(override, "export.shard.index=0", "export.shard.count=2", f"export.output_dir={tmp_path / 'seg'}"))
        assert err.value.key == key and "LOOKALIKE_ROOM" in str(err.value)
    assert not mine.exists() and not (tmp_path / "seg").exists() and runs_in(room["mine"]) == [0]


def test_budget_uses_the_rooms_ledger_and_refuses_another(tmp_path, room, capsys):
    budget_main(["--json"])
    assert '"budget_epsilon": 10.0' in capsys.readouterr().out  # the room's budget, not the operator's 1000
    budget_main(["--ledger", str(room["ledger"]), "--json"])  # naming the room's own ledger is fine
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        budget_main(["--ledger", str(room["mine"]), "set-rules", "0", "--min-matching-seed-size", "1"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lookalike-budget: error: --ledger") and "LOOKALIKE_ROOM" in line


@pytest.mark.parametrize(
    ("content", "key", "says"),
    [
        (None, "LOOKALIKE_ROOM", "cannot be read"),
        ("- ledger.path\n", "LOOKALIKE_ROOM", "is not a mapping"),
        ("ledger: [unclosed\n", "LOOKALIKE_ROOM", "is not valid YAML"),
        ("ledger: {path: /r/l.sqlite}\nexport: {shard: {parts_dir: /r/p}}\nmlflow: {tracking_uri: x}\n", "mlflow.tracking_uri", "is not a room setting"),
        ("ledger: {path: /r/l.sqlite}\n", "export.shard.parts_dir", "is missing from the room file"),
        ("ledger: {path: l.sqlite}\nexport: {shard: {parts_dir: /r/p}}\n", "ledger.path", "is relative"),
        ("ledger: {path: 'sqlite:///l.sqlite'}\nexport: {shard: {parts_dir: /r/p}}\n", "ledger.path", "is relative"),
        ("ledger: {path: /r/l.sqlite}\nexport: {shard: {parts_dir: /r/p}}\ncode: [lookalike., 'my towers']\n", "code", "must be a list of module prefixes"),
    ],
)
def test_a_bad_room_file_is_refused_in_one_line(demo_dir, tmp_path, monkeypatch, content, key, says):
    file = tmp_path / "room.yaml"
    if content is not None:
        file.write_text(content)
    monkeypatch.setenv("LOOKALIKE_ROOM", str(file))
    with pytest.raises(ConfigError) as err:
        train_config(make_cfg(demo_dir, tmp_path / "out", owner=False))
    assert err.value.key == key and says in str(err.value) and str(file) in str(err.value) and "\n" not in str(err.value)


def test_without_a_room_the_operator_picks_again(demo_dir, tmp_path, room, monkeypatch):
    cfg = make_cfg(demo_dir, tmp_path / "out", f"ledger.path={room['mine']}", owner=False)
    with pytest.raises(ConfigError, match="LOOKALIKE_ROOM"):
        train_config(cfg)
    monkeypatch.delenv("LOOKALIKE_ROOM")  # a laptop, the demo: today's behaviour
    assert train_config(cfg).ledger.path == str(room["mine"])
    typed = export_config(export_compose(f"export.shard.parts_dir={tmp_path / 'p'}", f"ledger.path={room['mine']}"))
    assert (typed.ledger.path, typed.export.shard.parts_dir) == (str(room["mine"]), str(tmp_path / "p"))


def test_train_cli_refuses_an_override_of_the_room_with_exit_2(demo_dir, tmp_path, room):
    code = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
    args = [
        "debug=default",
        f"paths.output_dir={tmp_path / 'out'}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        f"ledger.path={room['mine']}",
    ]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"lookalike-train: error: config 'ledger.path': is set by the room file '{room['file']}' (LOOKALIKE_ROOM); remove the override"
    ]
    assert files_under(tmp_path / "out") == [] and not (tmp_path / "hydra").exists() and runs_in(room["mine"]) == [0]


DCN = "model.user_tower._target_=examples.dcn_tower.CrossTower"


def test_a_room_runs_only_the_code_its_file_allows(demo_dir, tmp_path, room):
    """Code the operator brings runs with the seed in memory: a _target_ the owners did not list
    is refused by name, before its module is imported or anything is reserved."""
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        run(make_cfg(demo_dir, out, DCN, owner=False))
    assert err.value.key == "model.user_tower._target_" and "\n" not in str(err.value)
    assert f"'examples.dcn_tower.CrossTower' is code that the room file '{room['file']}' (LOOKALIKE_ROOM) does not allow (code: lookalike., torch.)" in str(
        err.value
    )
    assert files_under(out) == [] and runs_in(room["ledger"]) == [0]
    with pytest.raises(ConfigError, match="config 'trainer.optimizer._target_': 'my_opt.Fast' is code"):
        train_config(make_cfg(demo_dir, out, "trainer.optimizer._target_=my_opt.Fast", owner=False))
    # the owners list the packages they reviewed
    room["file"].write_text(room["file"].read_text() + "code: [lookalike., torch.optim., examples.]\n")
    assert train_config(make_cfg(demo_dir, out, DCN, owner=False)).model.custom_tower == "examples.dcn_tower.CrossTower"
    for target, key in (("torch.nn.Identity", "model.user_tower._target_"), ("examples_x.T", "model.user_tower._target_")):
        with pytest.raises(ConfigError) as err:
            train_config(make_cfg(demo_dir, out, f"model.user_tower._target_={target}", owner=False))
        assert err.value.key == key
    with pytest.raises(ConfigError) as err:  # a nested target, which Hydra would instantiate too
        train_config(make_cfg(demo_dir, out, DCN, "+model.user_tower.inner._target_=builtins.print", owner=False))
    assert err.value.key == "model.user_tower.inner._target_"


def test_export_in_a_room_imports_a_tower_the_room_allows_never_the_models_own_code(tmp_path, room):
    """A model's files are the operator's to edit: under a room the tower's module is checked
    against the room's list and imported from the room's packages, not from the model's code/."""
    spec = FeatureSpec("user_id", [NumericFeature("age", 40.0, 10.0, False)], [CategoricalFeature("device", ["ios", "web"])], [])
    model = TwoTower(spec, 1, ModelConfig(output_dim=4, user_tower={"_target_": "examples.dcn_tower.CrossTower"}))
    bundle = save_bundle(tmp_path / "bundle", model, spec, ["luxury"])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():
        uri = log_model(bundle, None)
    with pytest.raises(ConfigError) as err:
        load_logged_model(uri, "export.model")
    assert err.value.key == "export.model" and "'examples.dcn_tower.CrossTower' is code that the room file" in str(err.value)
    room["file"].write_text(room["file"].read_text() + "code: [lookalike., torch., examples.]\n")
    path = list(sys.path)
    loaded, _, meta = load_logged_model(uri, "export.model")
    assert sys.path == path and meta["model"]["user_tower"]["_target_"] == "examples.dcn_tower.CrossTower"  # no code/ put on the path
    assert type(loaded.user_tower).__module__ == "examples.dcn_tower"
