"""Noise calibration and the delta policy: the reported epsilon never exceeds the target."""

from __future__ import annotations

import pytest

from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.accounting import calibrate_noise, epsilon_from_history, resolve_delta
from lookalike.training.config import train_config


@pytest.mark.parametrize(("accountant", "target", "q", "steps"), [("prv", 3.0, 1 / 93, 460), ("rdp", 1.0, 0.02, 250), ("prv", 8.0, 0.1, 30)])
def test_calibrated_noise_meets_the_target_tightly(accountant, target, q, steps):
    sigma = calibrate_noise(target, 2e-6, q, steps, accountant)
    reached = epsilon_from_history([(sigma, q, steps)], 2e-6, accountant)
    assert target * (1 - 0.0051) <= reached <= target
    # a little less noise would overshoot: the calibration is not wastefully loose
    assert epsilon_from_history([(sigma * 0.97, q, steps)], 2e-6, accountant) > reached


@pytest.mark.parametrize("mechanism", ["prv", "rdp"])
def test_the_cached_accountants_report_opacus_epsilon_to_the_last_bit(mechanism):
    """privacy/accountants.py caches the per-step RDP of (q, sigma) and the PRV accountant's last
    answer: a run's epoch-end epsilon must stay exactly Opacus' own, epoch after epoch."""
    from opacus.accountants import create_accountant as opacus_accountant

    from lookalike.privacy.accountants import create_accountant

    for sigma, q, steps in [(1.05, 1 / 48, 48), (0.7, 0.01, 100), (3.0, 0.2, 5)]:
        ours, theirs = create_accountant(mechanism), opacus_accountant(mechanism)
        for epoch in range(1, 4):
            for accountant in (ours, theirs):
                for _ in range(steps):  # the optimizer hook's way: one step() per step
                    accountant.step(noise_multiplier=sigma, sample_rate=q)
            assert ours.history == theirs.history
            # The same delta as the epoch before: a remembered answer must be for these steps.
            assert ours.get_epsilon(2e-6) == theirs.get_epsilon(2e-6)
            assert ours.get_epsilon(2e-6) == theirs.get_epsilon(2e-6)
        assert ours.get_epsilon(1e-5) == theirs.get_epsilon(1e-5)
        ours.history = theirs.history = [(sigma, q, steps), (2 * sigma, q / 2, 7)]  # a resumed run's changed plan
        assert ours.get_epsilon(2e-6) == theirs.get_epsilon(2e-6)


def test_a_remembered_answer_is_for_the_same_domain():
    """PRV answers are remembered process-wide by their question, and an epoch-end answer on the
    planned run's domain is another question than Opacus' own for the same steps: neither may
    stand in for the other. The run's last epoch does reuse the calibration's answer."""
    from lookalike.privacy import accountants

    sigma, q, planned = 1.1, 1 / 50, 250

    def planned_answer() -> float:
        ours = accountants.create_accountant("prv")
        ours.planned_steps, ours.history = planned, [(sigma, q, 100)]
        return ours.get_epsilon(1e-6)

    accountants._ANSWERS.clear()
    alone = planned_answer()
    accountants._ANSWERS.clear()
    opacus_domain = epsilon_from_history([(sigma, q, 100)], 1e-6, "prv")
    assert opacus_domain != alone  # the two domains give different numbers for these steps
    assert planned_answer() == alone
    calibrated = calibrate_noise(2.0, 1e-6, q, planned, "prv")
    last = accountants.create_accountant("prv")
    last.planned_steps, last.history = planned, [(calibrated, q, planned)]
    remembered = len(accountants._ANSWERS)
    assert last.get_epsilon(1e-6) == epsilon_from_history([(calibrated, q, planned)], 1e-6, "prv") <= 2.0
    assert len(accountants._ANSWERS) == remembered  # asked while calibrating: not computed again


def test_unreachable_target_names_the_key():
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        calibrate_noise(1e-6, 1e-5, 0.5, 10_000, "rdp")


def test_delta_policy():
    assert resolve_delta(None, 1000) == pytest.approx(1e-4)
    assert resolve_delta(5e-4, 1000) == 5e-4
    for bad in (1e-3, 0.5, 0.0):
        with pytest.raises(LookalikeError, match="privacy.target_delta"):
            resolve_delta(bad, 1000)


def test_dp_training_spends_at_most_its_target(cfg_factory):
    """The full path: Poisson loader, accountant hook, calibration. The batch size is picked so
    the loader has L batches with int(1 / (1 / L)) == L - 1, where Opacus' own calibration
    overshot (3.02 for a target of 3)."""
    import math

    import numpy as np
    import torch

    from lookalike.model.towers import ModelConfig, TwoTower
    from lookalike.training.loop import train
    from lookalike.training.prepare import prepare

    data = prepare(train_config(cfg_factory()))
    n, batch = 465, 5  # L = 93 batches, and int(1 / (1 / 93)) == 92
    assert data.training.n_train >= n and int(1 / (1 / math.ceil(n / batch))) == math.ceil(n / batch) - 1
    rows = np.arange(n)
    cfg = train_config(cfg_factory("privacy.target_epsilon=3.0", "trainer.epochs=2", f"trainer.batch_size={batch}", f"trainer.physical_batch_size={batch}"))
    model = TwoTower(data.spec, 2, ModelConfig(embedding_dim=4, hidden_dims=[8], output_dim=4))
    delta = resolve_delta(None, n)
    result = train(
        model, data.train_features.take(rows).tensors() + [torch.from_numpy(data.training.train_labels[rows])], cfg, delta=delta, device=torch.device("cpu")
    )
    ((sigma, q, steps),) = result.history
    assert steps == result.steps == 2 * (math.ceil(n / batch) - 1)
    assert q == result.sample_rate and sigma == result.noise_multiplier
    assert 3.0 * 0.99 <= result.epsilon <= 3.0


@pytest.mark.parametrize(("sigma", "q", "per_epoch", "epochs"), [(1.1, 1 / 48, 48, 5), (2.0, 0.0084, 119, 12), (0.8, 0.05, 20, 6)])
def test_epoch_end_epsilon_on_the_planned_domain_bounds_opacus(sigma, q, per_epoch, epochs):
    """Epochs before the last compose on the planned run's (finer, wider) domain: within a
    thousandth of Opacus' own answer for those steps, never below its estimate (its upper bound
    less eps_error), the last epoch exactly Opacus', and the dp-accounting PLD accountant's
    epsilon (an independent implementation) never above ours."""
    from dp_accounting import dp_event, pld
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    from lookalike.privacy.accountants import create_accountant

    ours = create_accountant("prv")
    ours.planned_steps = per_epoch * epochs
    for epoch in range(1, epochs + 1):
        steps = per_epoch * epoch
        ours.history = [(sigma, q, steps)]
        theirs = PRVAccountant()
        theirs.history = [(sigma, q, steps)]
        mine, opacus = ours.get_epsilon(1e-6), theirs.get_epsilon(1e-6)
        if epoch == epochs:
            assert mine == opacus
        assert opacus - 0.01 <= mine <= opacus + 1e-3
        if epoch in (1, epochs // 2):
            independent = pld.PLDAccountant(value_discretization_interval=1e-3)
            independent.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
            assert independent.get_epsilon(1e-6) <= mine
    # What the bound rests on: the step was discretised on a domain at least as wide and as fine
    # as Opacus' for the whole run (a domain for fewer steps gives close numbers and no bound).
    whole_run = PRVAccountant()._get_domain(
        prvs=[PoissonSubsampledGaussianPRV(q, sigma)], num_self_compositions=[per_epoch * epochs], eps_error=0.01, delta_error=1e-9
    )
    used = ours._step[1].domain
    assert used.dt <= whole_run.dt * (1 + 1e-9)
    assert (used.size - 1) * used.dt >= (whole_run.size - 1) * whole_run.dt
