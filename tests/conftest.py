"""Shared fixtures: small real Parquet/JSON-lines data and the real Hydra config, composed in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lookalike.data.demo import write_demo
from lookalike.train import CONFIG_DIR

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
SMALL_USERS = 4000


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The synthetic demo data at a size that trains in seconds (~120 matched users per audience)."""
    folder = tmp_path_factory.mktemp("demo")
    write_demo(folder, SMALL_USERS, seed=3)
    return folder


def make_cfg(demo_dir: Path, out: Path, *overrides: str) -> DictConfig:
    """The real train config with ``debug=default``, reading ``demo_dir`` and writing under ``out``."""
    base = [
        "debug=default",
        f"paths.output_dir={out}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + list(overrides))
    return cfg


@pytest.fixture
def cfg_factory(demo_dir, tmp_path):
    def factory(*overrides: str, out: Path | None = None) -> DictConfig:
        return make_cfg(demo_dir, out or tmp_path / "out", *overrides)

    return factory


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
