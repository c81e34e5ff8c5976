"""Files the package ships, found through the package itself, never beside a source tree: an
installed wheel has no repo around it."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
# The Hydra configs (train.yaml, export.yaml and their groups). A user's own folder is added
# with Hydra's --config-dir or hydra.searchpath; `lookalike-config cp` copies one out to start from.
CONFIG_DIR = str(HERE / "conf")
# UCI Adult (CC BY 4.0; see data/UCI_ADULT.md), the real-data example.
ADULT_TABLE = HERE / "data" / "uci_adult.parquet"
