"""The clean-room rules are the data owners': stored with the budget, set with lookalike-budget,
tightened but never loosened by a run's config; a refused run charges and writes nothing."""

from __future__ import annotations

import json

import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.errors import ConfigError, LookalikeError
from lookalike.export.app import run as export
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import run
from tests.conftest import untouched
from tests.test_export import export_cfg


def test_a_new_budget_forbids_trusted_and_non_private_runs(demo_dir, tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    budget_main(["--ledger", str(ledger), "create", "--publisher", str(demo_dir / "publisher"), "--epsilon", "5"])
    budget_main(["--ledger", str(ledger), "--json"])
    (row,) = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert row["rules"] == {
        "min_matching_seed_size": 500,
        "min_aggregation_size": 100,
        "allow_list_output": True,
        "max_epsilon_per_run": None,
        "allow_trusted_evaluation": False,
        "allow_non_private": False,
        "allow_seed_in_output": False,
        "max_delta_per_release": None,
    }
    budget_main(["--ledger", str(ledger), "set-rules", row["fingerprint"][:8], "--min-matching-seed-size", "25", "--allow-trusted-evaluation"])
    rules = Ledger(ledger).status()[0].rules
    assert rules["min_matching_seed_size"] == 25 and rules["allow_trusted_evaluation"] is True and rules["allow_non_private"] is False


@pytest.mark.parametrize(
    ("owner", "override", "key"),
    [
        ("owner.allow_trusted_evaluation=false", "trusted_evaluation=true", "trusted_evaluation"),
        ("owner.allow_non_private=false", "privacy.enabled=false", "privacy.enabled"),
        ("owner.min_matching_seed_size=100", "rules.min_matching_seed_size=25", "rules.min_matching_seed_size"),
        ("owner.min_aggregation_size=100", "rules.min_aggregation_size=2", "rules.min_aggregation_size"),
        ("owner.allow_list_output=false", "rules.allow_list_output=true", "rules.allow_list_output"),
        ("owner.max_epsilon_per_run=2", "privacy.target_epsilon=3", "privacy.target_epsilon"),
    ],
)
def test_a_looser_override_is_refused_naming_the_rule(cfg_factory, tmp_path, owner, override, key):
    extra = ["trusted_evaluation=true"] if key == "privacy.enabled" else []
    cfg = cfg_factory(owner, override, *extra, out=tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.key == key and "\n" not in str(err.value)
    untouched(tmp_path / "out", cfg.ledger.path)


def test_a_tighter_override_applies(cfg_factory, tmp_path):
    # the owners allow seeds of 25; the operator asks for 1000, which the tiny seed does not reach
    # (a trusted run decides on the exact count before anything is reserved; a private one on its
    # charged DP count: tests/test_seed_size_oracle.py)
    cfg = cfg_factory("rules.min_matching_seed_size=1000", "trusted_evaluation=true", out=tmp_path / "out")
    with pytest.raises(LookalikeError, match="matches fewer than 1000 publisher users"):
        run(cfg)
    untouched(tmp_path / "out", cfg.ledger.path)


def test_export_takes_the_owners_rules(demo_dir, tmp_path):
    from tests.conftest import make_cfg

    out = tmp_path / "trained"
    cfg = make_cfg(demo_dir, out, "privacy.target_epsilon=2", "owner.min_aggregation_size=150", "owner.allow_list_output=false")
    run(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    trained = (out, logged.info.run_id)
    with pytest.raises(ConfigError, match="rules.min_aggregation_size"):
        export(export_cfg(demo_dir, trained, tmp_path / "loose", "rules.min_aggregation_size=100"))
    report = export(export_cfg(demo_dir, trained, tmp_path / "seg", "rules.min_aggregation_size=300"))
    assert report["privacy"]["min_aggregation_size"] == 300
    assert all(b["segment"].startswith("not written") for a in report["audiences"].values() for b in a["bins"])
    assert not list((tmp_path / "seg").glob("audience=*"))  # the owners allow no user lists
