"""The one-run canary audit: its statistics, and the test that gives it meaning: a DP run's lower
bound never exceeds its epsilon, while a non-private control leaks clearly."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from lookalike.privacy.audit_bound import binomial_tail, epsilon_lower_bound
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run


def test_binomial_tail_and_bound():
    assert binomial_tail(10, 0, 0.3) == 1.0
    assert binomial_tail(4, 4, 0.5) == pytest.approx(1 / 16)
    assert binomial_tail(20, 15, 0.5) == pytest.approx(sum(math.comb(20, i) for i in range(15, 21)) / 2**20)
    assert epsilon_lower_bound(100, 200, 1000, 0.0) == 0.0  # chance level proves nothing
    # all 200 right: p^200 = 0.05 at p = 0.05^(1/200), eps = log(p / (1 - p))
    p = 0.05 ** (1 / 200)
    assert epsilon_lower_bound(200, 200, 1000, 0.0) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)
    assert epsilon_lower_bound(150, 200, 1000, 0.0) < epsilon_lower_bound(180, 200, 1000, 0.0)


def audited(cfg) -> dict:
    run(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    assert logged.data.tags["lookalike.audit"] == "one_run"
    return logged.data.metrics


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logistic", "two_tower"])
def test_dp_lower_bound_stays_below_epsilon_and_the_non_private_control_leaks(cfg_factory, tmp_path, model):
    control = audited(
        cfg_factory(
            "audit=one_run",
            "audit.canaries=500",
            f"model={model}",
            "privacy.enabled=false",
            "trusted_evaluation=true",
            "trainer.epochs=5",
            out=tmp_path / "control",
        )
    )
    # no clipping, no noise: the model remembers exactly which canary tokens it saw
    assert control["audit.correct"] >= 95 and control["audit.epsilon_lower_bound"] > 2.5
    for eps in (1.0, 4.0):
        dp = audited(
            cfg_factory(
                "audit=one_run",
                "audit.canaries=500",
                f"model={model}",
                f"privacy.target_epsilon={eps}",
                "trainer.epochs=5",
                "owner.epsilon=20",
                out=tmp_path / f"dp-{eps}",
            )
        )
        assert dp["audit.guesses"] == 100 and dp["audit.canaries"] == 500
        assert dp["audit.epsilon_lower_bound"] <= dp["privacy.epsilon_spent"] <= eps
