"""Composing a dataset's runs by their privacy curves: never above the sum, equal to what
dp-accounting gets for the same sequence of mechanisms."""

from __future__ import annotations

import dp_accounting as dpa
import pytest

from lookalike.errors import BudgetExceededError
from lookalike.privacy.composition import compose
from lookalike.privacy.ledger import Ledger
from tests.conftest import reserve_on

FP = "e" * 64
RUNS = [[(1.1, 0.01, 500), (3.0, 1.0, 1)], [(0.9, 0.02, 300), (4.0, 1.0, 1)], [(2.0, 1.0, 1)]]  # two trainings, one export report


def spend(ledger: Ledger, events, epsilon: float, delta: float = 1e-6) -> None:
    entry = reserve_on(ledger, FP, epsilon, delta, budget=100, budget_delta=None, kind="train", description="t")
    ledger.record_spent(entry, epsilon, events)


def pld_of(runs, delta: float) -> float:
    accountant = dpa.pld.PLDAccountant()
    for run in runs:
        for sigma, q, steps in run:
            inner = dpa.GaussianDpEvent(sigma)
            accountant.compose(dpa.SelfComposedDpEvent(inner if q == 1.0 else dpa.PoissonSampledDpEvent(q, inner), steps))
    return accountant.get_epsilon(delta)


def test_composed_is_below_the_sum_and_matches_dp_accounting(tmp_path):
    from lookalike.privacy.accounting import epsilon_from_history

    ledger = Ledger(tmp_path / "l.sqlite")
    for run in RUNS:
        spend(ledger, run, epsilon_from_history(run, 1e-6, "prv"))
    c = compose(ledger, FP)
    assert c.delta == pytest.approx(3e-6) and c.composed_entries == 3 and c.summed_entries == 0
    assert c.charged_epsilon < 0.8 * c.summed_epsilon  # composition is markedly tighter here
    reference = pld_of(RUNS, 3e-6)
    assert reference <= c.charged_epsilon <= reference * 1.05 + 0.02
    # what the ledger enforces and shows is that composed charge
    (status,) = ledger.status()
    assert status.charged_epsilon == pytest.approx(c.charged_epsilon) and status.remaining_epsilon == pytest.approx(100 - c.charged_epsilon)


def test_non_gaussian_and_open_entries_are_added_at_face_value(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    spend(ledger, None, 1.0)  # e.g. randomised-response seed exclusion
    c = compose(ledger, FP)
    assert c.composed_epsilon is None and c.charged_epsilon == c.summed_epsilon == 1.0 and "no finished entry" in c.reason
    for run in RUNS:
        spend(ledger, run, 2.0)
    reserve_on(ledger, FP, 0.5, 1e-6, budget=100, budget_delta=None, kind="train", description="crashed")
    c = compose(ledger, FP)
    gaussian_only = pld_of(RUNS, 3e-6)
    assert c.summed_epsilon == 7.5 and (c.composed_entries, c.summed_entries) == (3, 2)
    assert gaussian_only + 1.5 <= c.charged_epsilon <= gaussian_only * 1.05 + 1.52  # composed block + 1.0 + 0.5


def test_the_ledger_enforces_the_composed_charge(tmp_path):
    """Two runs that summing would refuse fit once the first one is charged by its curve; the
    refusal names the composed figure; a run reserved meanwhile still counts at face value."""
    from lookalike.privacy.accounting import epsilon_from_history

    ledger = Ledger(tmp_path / "l.sqlite")
    run = [(0.8, 0.01, 2000), (3.0, 1.0, 1)]  # a training run and its evaluation release
    face = epsilon_from_history(run[:1], 1e-6, "prv") + epsilon_from_history(run[1:], 1e-6, "prv")
    budget = 1.9 * face
    entry = reserve_on(ledger, FP, face, 2e-6, budget=budget, budget_delta=None, kind="train", description="first")
    ledger.record_spent(entry, face, run)
    charged = ledger.status()[0].charged_epsilon
    assert charged < face  # training and evaluation compose inside one run too
    reserve_on(ledger, FP, budget - charged - 1e-3, 1e-6, budget=budget, budget_delta=None, kind="train", description="second")
    with pytest.raises(BudgetExceededError, match=r"composition of 1 finished Gaussian entries.*1 other entries summed"):
        reserve_on(ledger, FP, 0.01, 1e-6, budget=budget, budget_delta=None, kind="train", description="third")
    assert face + (budget - charged - 1e-3) > budget  # summing would have refused the second run


def test_a_real_training_run_records_its_mechanisms(cfg_factory):
    """The ledger composes a run by its events, so each event must be the mechanism that really
    ran: the evaluation release is a Gaussian of std sigma at L2 sensitivity sqrt(2 A), i.e.
    multiplier sigma / sqrt(2 A); recorded as sigma it would be charged a fraction of its
    epsilon. Checked against the logged std and against what (epsilon, delta) imply."""
    import json
    import math

    from mlflow.tracking import MlflowClient

    from lookalike.privacy.accounting import epsilon_from_history
    from lookalike.privacy.mechanisms import gaussian_sigma
    from lookalike.runtime.tracking import resolve_tracking_uri
    from lookalike.training.train import run

    cfg = cfg_factory("privacy.target_epsilon=1.0", "evaluation.epsilon=1.0")
    run(cfg)
    ledger = Ledger(cfg.ledger.path)
    (entry,) = ledger.entries(ledger.status()[0].fingerprint)
    c = compose(ledger, entry["fingerprint"])

    events = [tuple(e) for e in json.loads(entry["events"])]
    # DP-SGD steps, then the evaluation release and the training-set size estimate
    assert len(events) == 3 and events[1][1:] == events[2][1:] == (1.0, 1)
    assert c.composed_entries == 1 and c.charged_epsilon < c.summed_epsilon
    # composing can never be more private than the training run alone at the same delta
    assert c.charged_epsilon >= epsilon_from_history(events[:1], c.delta, "prv")

    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    audiences = len(logged.data.tags["lookalike.audiences"].split(","))
    eval_epsilon, eval_delta, std = (logged.data.metrics[f"dp.{k}"] for k in ("eval_epsilon", "eval_delta", "noise_std"))
    assert (eval_epsilon, eval_delta) == (1.0, 1e-6) and audiences >= 2  # evaluation.delta null: min(1e-6, 1/(100 R))
    sensitivity = math.sqrt(2 * audiences)
    multiplier = events[1][0]
    assert multiplier == pytest.approx(std / sensitivity, rel=1e-9)
    assert multiplier == pytest.approx(gaussian_sigma(eval_epsilon, eval_delta, sensitivity) / sensitivity, rel=1e-9)
    # the evaluation event alone is charged its own epsilon (PRV's estimate is within ~1%)
    assert epsilon_from_history([events[1]], eval_delta, "prv") == pytest.approx(eval_epsilon, rel=0.03)


def test_a_mechanism_with_almost_no_noise_is_charged_at_face_value(tmp_path):
    """Composing sigma = 1e-4 made PRV allocate gigabytes; face value is always valid."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    entry = reserve_on(ledger, FP, 60.0, 1e-6, budget=100)
    ledger.record_spent(entry, 50.0, [(1.0, 0.01, 100), (1e-4, 1.0, 1)])
    c = compose(ledger, FP)
    assert c.composed_entries == 0 and c.charged_epsilon == 50.0
