"""Composing a dataset's runs by their privacy curves: never above the sum, equal to what
dp-accounting gets for the same sequence of mechanisms."""

from __future__ import annotations

import dp_accounting as dpa
import pytest

from lookalike.privacy.composition import compose
from lookalike.privacy.ledger import Ledger

FP = "e" * 64
RUNS = [[(1.1, 0.01, 500), (3.0, 1.0, 1)], [(0.9, 0.02, 300), (4.0, 1.0, 1)], [(2.0, 1.0, 1)]]  # two trainings, one export report


def spend(ledger: Ledger, events, epsilon: float, delta: float = 1e-6) -> None:
    entry = ledger.reserve(FP, epsilon, delta, budget_epsilon=100, budget_delta=None, kind="train", description="t")
    ledger.record_spent(entry, epsilon, events)


def pld_of(runs, delta: float) -> float:
    accountant = dpa.pld.PLDAccountant()
    for run in runs:
        for sigma, q, steps in run:
            inner = dpa.GaussianDpEvent(sigma)
            accountant.compose(dpa.SelfComposedDpEvent(inner if q == 1.0 else dpa.PoissonSampledDpEvent(q, inner), steps))
    return accountant.get_epsilon(delta)


def test_composed_is_below_the_sum_and_matches_dp_accounting(tmp_path):
    from lookalike.privacy.dp import epsilon_from_history

    ledger = Ledger(tmp_path / "l.sqlite")
    for run in RUNS:
        spend(ledger, run, epsilon_from_history(run, 1e-6, "prv"))
    c = compose(ledger, FP)
    assert c.delta == pytest.approx(3e-6) and c.composed_epsilon is not None
    assert c.composed_epsilon < 0.8 * c.summed_epsilon  # composition is markedly tighter here
    reference = pld_of(RUNS, 3e-6)
    assert reference <= c.composed_epsilon <= reference * 1.05 + 0.02


def test_any_non_gaussian_or_open_entry_falls_back_to_the_sum(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    spend(ledger, RUNS[0], 2.0)
    spend(ledger, None, 1.0)  # e.g. randomised-response seed exclusion
    c = compose(ledger, FP)
    assert c.composed_epsilon is None and c.summed_epsilon == 3.0 and "no Gaussian record" in c.reason
    ledger.reserve(FP, 0.5, 1e-6, budget_epsilon=100, budget_delta=None, kind="train", description="crashed")
    assert compose(ledger, FP).summed_epsilon == 3.5


def test_a_real_training_run_records_its_mechanisms(cfg_factory):
    from lookalike.train import run

    cfg = cfg_factory("privacy.target_epsilon=1.0", "evaluation.epsilon=1.0")
    run(cfg)
    ledger = Ledger(cfg.ledger.path)
    (entry,) = ledger.entries(ledger.status()[0].fingerprint)
    c = compose(ledger, entry["fingerprint"])
    import json

    from lookalike.privacy.dp import epsilon_from_history

    events = [tuple(e) for e in json.loads(entry["events"])]
    assert len(events) == 2 and events[1][1:] == (1.0, 1)  # DP-SGD steps, then the evaluation release
    assert c.composed_epsilon is not None and c.composed_epsilon <= c.summed_epsilon
    # composing can never be more private than the training run alone at the same delta
    assert c.composed_epsilon >= epsilon_from_history(events[:1], c.delta, "prv")
