"""Every release's delta is capped by the data owners (1/(10 R) for R public rows unless they set
rules.max_delta_per_release), and a new budget caps its total delta at 1/R. An audit bought
near-exact releases with near-1 deltas at almost no epsilon: size_delta=0.9 logged the exact N
for 0.05, report_delta=0.99 cut the report's noise std from 34.2 to 0.80, evaluation.delta=0.9
gave exact held-out metrics, and one size_delta=0.5 run let five more spend 16.98 of a budget
of 10 while the ledger charged 0.459."""

from __future__ import annotations

import json

import pytest

from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import run
from tests.conftest import untouched
from tests.test_export import export_cfg, trained  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    "override, key",
    [
        ("privacy.size_delta=0.9", "privacy.size_delta"),
        ("privacy.size_delta=0.5", "privacy.size_delta"),
        ("evaluation.delta=0.9", "evaluation.delta"),
        ("privacy.size_delta=2.6e-5", "privacy.size_delta"),  # just above 1/(10 x 4000)
    ],
)
def test_a_release_delta_above_the_cap_is_refused_before_any_charge(cfg_factory, tmp_path, override, key):
    cfg = cfg_factory(override, out=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"above the largest delta one release may have .*1/\(10 R\) for the R = 4000") as err:
        run(cfg)
    assert err.value.key == key and "\n" not in str(err.value)
    untouched(tmp_path / "out", cfg.ledger.path)


def test_the_owners_cap_binds_the_training_delta_too(cfg_factory, tmp_path):
    cfg = cfg_factory("owner.max_delta_per_release=1e-6", out=tmp_path / "out")
    with pytest.raises(ConfigError, match="rules.max_delta_per_release") as err:
        run(cfg)  # the default training delta, 1/(10 R) = 2.5e-5, is above the owners' 1e-6
    assert err.value.key == "privacy.target_delta"
    untouched(tmp_path / "out", cfg.ledger.path)
    run(cfg_factory("owner.max_delta_per_release=1e-6", "privacy.target_delta=1e-6", "privacy.target_epsilon=1", out=tmp_path / "ok"))


def test_a_new_budget_caps_its_total_delta_at_one_over_r_and_defaults_fit_under_the_cap(cfg_factory, tmp_path):
    cfg = cfg_factory("privacy.target_epsilon=1", out=tmp_path / "out")
    run(cfg)
    (status,) = Ledger(cfg.ledger.path).status()
    assert status.budget_delta == pytest.approx(1 / 4000)
    (entry,) = Ledger(cfg.ledger.path).entries(status.fingerprint)
    # training 1/(10 R) + size counts 1e-7 + evaluation 1e-6, each at most 1/(10 R)
    assert entry["delta"] == pytest.approx(1 / 40000 + 1e-7 + 1e-6)
    assert json.loads(entry["plan"])["settings"]["privacy.size_delta"] == "None"


def test_an_export_report_delta_above_the_cap_is_refused(demo_dir, trained, tmp_path):  # noqa: F811
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    before = ledger.status()
    with pytest.raises(ConfigError, match="above the largest delta one release may have") as err:
        export(export_cfg(demo_dir, trained, tmp_path / "out", "export.report_delta=0.99"))
    assert err.value.key == "export.report_delta" and ledger.status() == before and not (tmp_path / "out").exists()
