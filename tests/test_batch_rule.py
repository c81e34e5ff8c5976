"""The batch rule (training/batch_rule.py): the batch follows from the DP estimate of N and the
privacy target, aims at its noise multiplier, and never reads the exact (seed-derived) size."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from lookalike.privacy import size_release
from lookalike.privacy.accounting import calibrate_noise, sample_rate_for_noise
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.batch_rule import BASE_EPOCHS, MAX_EPOCHS, MIN_STEPS, NON_PRIVATE_BATCH, BatchPlan, batch_plan
from lookalike.training.config import TrainConfig, train_config
from lookalike.training.train import run


@pytest.mark.parametrize(("epsilon", "delta", "aim"), [(1.0, 2e-6, 2.0), (0.3, 1e-6, 2.0), (1.0, 1.7e-5, 3.0)])
def test_the_rate_spends_the_target_at_the_aimed_noise(epsilon, delta, aim):
    q = sample_rate_for_noise(aim, epsilon, delta, 5, "prv")
    steps = math.ceil(5 / q)
    # the accountant's own calibration at that rate and step count lands on the aim
    assert calibrate_noise(epsilon, delta, q, steps, "prv") == pytest.approx(aim, rel=0.03)


def test_a_small_epsilon_gets_more_steps_a_large_one_is_held_to_the_minimum():
    small, medium = (sample_rate_for_noise(2.0, e, 1e-6, 5, "prv") for e in (0.3, 1.0))
    assert 5 / small > 5 / medium > 100  # more steps at the smaller budget, the same noise
    cfg = TrainConfig()
    cfg.privacy.target_epsilon = 8.0  # the rate at noise 2 would be a few dozen steps in all
    assert batch_plan(cfg, 100_000, 1e-6).batch == round(100_000 * 5 / MIN_STEPS)


def test_the_batch_scales_with_the_estimate_and_an_explicit_batch_wins():
    cfg = TrainConfig()
    cfg.privacy.target_epsilon, cfg.trainer.epochs = 1.0, 5  # at a fixed number of epochs
    small, large = batch_plan(cfg, 10_000, 2e-6).batch, batch_plan(cfg, 40_000, 2e-6).batch
    assert large == pytest.approx(4 * small, rel=0.01)
    cfg.trainer.batch_size = 300
    assert batch_plan(cfg, 10_000, 2e-6).batch == 300
    cfg.trainer.batch_size, cfg.privacy.enabled = None, False
    assert batch_plan(cfg, 10_000, 0.0).batch == NON_PRIVATE_BATCH


def test_a_run_takes_the_rule_batch_of_the_released_size_not_the_exact_one(cfg_factory, monkeypatch):
    # trusted (the owners of the test data allow it) so the exact size is logged beside the released
    # one; a small size epsilon makes the two batches differ (the estimate's noise std is ~570).
    # The release's own draw is seeded (2.04 std above the count): drawn from OS entropy it lands in
    # the exact count's batch (11 sizes wide) about one run in 130, and the test could not tell.
    monkeypatch.setattr(size_release, "secrets", SimpleNamespace(randbits=lambda bits: 3))
    cfg = cfg_factory("trainer.batch_size=null", "privacy.target_epsilon=3.0", "privacy.size_epsilon=0.01", "trainer.epochs=10", "trusted_evaluation=true")
    run(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    m = logged.data.metrics
    released, exact = m["data.training_examples_dp"], m["trusted.training_examples"]
    typed = train_config(cfg)
    assert m["trainer.batch_size_used"] == batch_plan(typed, int(released), m["privacy.delta"]).batch
    # what the run saw is the release, not the seed-derived count (the two batches differ here)
    assert batch_plan(typed, int(exact), m["privacy.delta"]).batch != m["trainer.batch_size_used"]
    assert m["privacy.sample_rate"] == pytest.approx(1 / math.ceil(released / m["trainer.batch_size_used"]))
    assert m["trainer.epochs_used"] == 10


def test_a_large_training_set_gets_more_epochs_not_a_larger_batch():
    """epochs null: 5 while the rule's batch is at most trainer.batch_rule_max; above it, as many
    epochs as bring the batch back near it (q E is about constant), up to MAX_EPOCHS; an explicit
    epochs or batch is used as given; a non-private run takes 5."""
    cfg = TrainConfig()
    cfg.privacy.target_epsilon = 1.0
    small = batch_plan(cfg, 20_000, 2e-6)
    assert small.epochs == BASE_EPOCHS and small.batch <= cfg.trainer.batch_rule_max
    large = batch_plan(cfg, 95_000, 2e-6)  # about 2,800 at 5 epochs
    five = _five_epoch_batch(cfg, 95_000)
    assert five > 2 * cfg.trainer.batch_rule_max
    assert large.epochs == math.ceil(BASE_EPOCHS * five / cfg.trainer.batch_rule_max)
    assert 0.8 * cfg.trainer.batch_rule_max <= large.batch <= 1.2 * cfg.trainer.batch_rule_max
    assert batch_plan(cfg, 5_000_000, 2e-6).epochs == MAX_EPOCHS
    cfg.trainer.epochs = 5
    assert batch_plan(cfg, 95_000, 2e-6) == BatchPlan(5, five)
    cfg.trainer.epochs, cfg.trainer.batch_size = None, 4096
    assert batch_plan(cfg, 95_000, 2e-6) == BatchPlan(BASE_EPOCHS, 4096)
    cfg.trainer.batch_size, cfg.privacy.enabled = None, False
    assert batch_plan(cfg, 95_000, 0.0) == BatchPlan(BASE_EPOCHS, NON_PRIVATE_BATCH)


def _five_epoch_batch(cfg: TrainConfig, examples: int) -> int:
    fixed = TrainConfig()
    fixed.privacy.target_epsilon, fixed.trainer.epochs = cfg.privacy.target_epsilon, BASE_EPOCHS
    return batch_plan(fixed, examples, 2e-6).batch


def test_the_epoch_rule_leaves_a_large_epsilon_at_five():
    # At epsilon 8 the rate is held to MIN_STEPS steps, where more epochs would mean a larger batch.
    cfg = TrainConfig()
    cfg.privacy.target_epsilon = 8.0
    assert batch_plan(cfg, 100_000, 1e-6) == BatchPlan(BASE_EPOCHS, round(100_000 * 5 / MIN_STEPS))
