"""The real-data example: UCI Adult, shipped in the repo."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from lookalike.data.adult import write_adult
from lookalike.training.train import CONFIG_DIR, run
from tests.conftest import grant


@pytest.fixture(scope="module")
def adult_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adult")
    assert write_adult(folder) == (48842, 11687)
    return folder


def test_publisher_table_carries_no_label(adult_dir):
    schema = pq.read_schema(adult_dir / "publisher.parquet")
    assert "income" not in schema.names and "fnlwgt" not in schema.names
    assert schema.names[0] == "user_id" and "marital_status" in schema.names
    seed = [json.loads(line) for line in (adult_dir / "seed.jsonl").read_text().splitlines()]
    assert len({r["user_id"] for r in seed}) == 11687 and {r["audience"] for r in seed} == {"high_income"}


def test_dp_model_on_adult_ranks_held_out_high_earners_well(adult_dir, tmp_path):
    overrides = [
        "experiment=adult",
        f"paths.output_dir={tmp_path}",
        f"data.publisher_path={adult_dir / 'publisher.parquet'}",
        f"data.seed_path={adult_dir / 'seed.jsonl'}",
        "trainer.epochs=3",
        "trainer.progress_bar=false",
        "trainer.device=cpu",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    grant(cfg.ledger.path, adult_dir / "publisher.parquet")  # public data: its owners allow exact metrics
    auc = run(cfg)
    assert auc > 0.85  # random ranking: 0.5; a full 10-epoch run at epsilon 1 reaches about 0.90
