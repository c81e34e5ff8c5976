"""Shared fixtures: small real Parquet/JSON-lines data and the real Hydra config, composed in-process."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lookalike.cli.budget import main as budget_main
from lookalike.data.demo import write_demo
from lookalike.training.train import CONFIG_DIR
from tests.ledger_helpers import open_budget, reserve_on  # noqa: F401  (re-exported for the tests)

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A deployment's room file (runtime/room.py) in the shell that runs the tests would redirect their
# ledgers: the tests that need one set it themselves.
os.environ.pop("LOOKALIKE_ROOM", None)
SMALL_USERS = 4000


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The synthetic demo data at a size that trains in seconds (~120 matched users per audience)."""
    folder = tmp_path_factory.mktemp("demo")
    write_demo(folder, SMALL_USERS, seed=3)
    return folder


OWNER = "owner."  # test-only overrides: the data owners' budget and rules, not config keys


def grant(ledger: str | Path, publisher: str | Path, epsilon: float = 100.0, **rules) -> None:
    """What the data owners do before any run: a budget and rules for the publisher's users
    (through the real ``lookalike-budget create``; the test data is synthetic, so trusted and
    non-private runs are allowed and the small seed passes)."""
    args = ["--ledger", str(ledger), "create", "--publisher", str(publisher), "--epsilon", str(epsilon), "--if-missing"]
    rules = {"min_matching_seed_size": 25, "allow_trusted_evaluation": True, "allow_non_private": True} | rules
    for key, value in rules.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag.replace("--", "--no-", 1)] if value is False else [flag, str(value)]
    budget_main(args)


def make_cfg(demo_dir: Path, out: Path, *overrides: str, owner: bool = True) -> DictConfig:
    """The real train config with ``debug=default``, reading ``demo_dir`` and writing under ``out``;
    with ``owner`` the owners' budget exists in its ledger (``owner.epsilon=2``, ``owner.<rule>=v``
    among the overrides set it)."""
    base = [
        "debug=default",
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
    ]
    settings = dict(o[len(OWNER) :].split("=", 1) for o in overrides if o.startswith(OWNER))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + [o for o in overrides if not o.startswith(OWNER)])
    if owner:
        epsilon = float(settings.pop("epsilon", 100.0))
        rules = {k: {"true": True, "false": False}.get(v, v) for k, v in settings.items()}
        grant(cfg.ledger.path, demo_dir / "publisher", epsilon, **rules)
    return cfg


@pytest.fixture
def fixed_entropy(monkeypatch):
    """DP-SGD's noise and Poisson sample (mechanisms.entropy_generator) and the size release seeded
    1, 2, 3...: for tests that assert a DP run learns (an AUC above a bar), which with OS entropy
    fell under it in about 1 run in 55 to 1 in 2,500 (measured over hundreds of runs each)."""
    from lookalike.privacy import mechanisms, size_release

    seeds = itertools.count(1)
    fixed = SimpleNamespace(randbits=lambda bits: next(seeds))
    monkeypatch.setattr(mechanisms, "secrets", fixed)
    monkeypatch.setattr(size_release, "secrets", fixed)


@pytest.fixture
def cfg_factory(demo_dir, tmp_path):
    def factory(*overrides: str, out: Path | None = None, owner: bool = True) -> DictConfig:
        return make_cfg(demo_dir, out or tmp_path / "out", *overrides, owner=owner)

    return factory


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def untouched(out: Path, ledger_path: str | Path) -> None:
    """A refused run left nothing under ``out`` but the owners' ledger, with no entry in it."""
    from lookalike.privacy.ledger import Ledger

    assert [p for p in files_under(out) if p != Path(ledger_path)] == [], "a refused run must leave no MLflow store or output behind"
    assert [s.runs for s in Ledger(ledger_path).status()] == [0], "a refused run must charge nothing"


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session (tests/postgres.py)."""
    from tests.postgres import Server, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install -y postgresql, as .ci/run does)")
    server = Server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request, tmp_path) -> str:
    """A fresh, empty ledger location on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return request.getfixturevalue("postgres_server").new_database()
