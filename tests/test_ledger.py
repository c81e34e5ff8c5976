"""The privacy ledger: reservations, refusals, crashes, and real processes racing for budget."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from lookalike.errors import BudgetExceededError, LookalikeError
from lookalike.privacy.budgets import set_budget
from lookalike.privacy.ledger import Ledger
from tests.conftest import open_budget, reserve_on

FP = "f" * 64


def reserve(ledger: Ledger, eps: float, budget: float = 3.0, delta: float = 1e-6) -> int:
    return reserve_on(ledger, FP, eps, delta, budget=budget, budget_delta=None, kind="train", description="test")


def test_reserve_spend_and_refuse(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    first = reserve(ledger, 2.0)
    (status,) = ledger.status()
    assert (status.reserved_epsilon, status.spent_epsilon, status.remaining_epsilon) == (2.0, 0, 1.0)
    ledger.record_spent(first, 1.7)
    (status,) = ledger.status()
    assert (status.reserved_epsilon, status.spent_epsilon) == (0, 1.7) and status.remaining_epsilon == pytest.approx(1.3)
    with pytest.raises(BudgetExceededError, match="needs epsilon 2 but only 1.3 of 3 remains"):
        reserve(ledger, 2.0)
    assert ledger.status()[0].runs == 1  # the refusal left no entry behind
    reserve(ledger, 1.3)  # exactly the rest fits
    with pytest.raises(LookalikeError, match="not an open reservation"):
        ledger.record_spent(first, 0.1)


def test_a_crashed_run_stays_charged_and_release_is_explicit(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    crashed = reserve(ledger, 1.0)  # never closed, as after a crash
    released = reserve(ledger, 1.0)
    ledger.release(released)
    (status,) = ledger.status()
    assert status.reserved_epsilon == 1.0 and status.remaining_epsilon == 2.0
    assert ledger.entry(crashed)["status"] == "reserved" and ledger.entry(released)["status"] == "released"


def test_budget_is_fixed_at_first_use_and_changed_only_deliberately(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    reserve(ledger, 1.0, budget=1.5)
    with pytest.raises(BudgetExceededError):
        reserve(ledger, 1.0, budget=100.0)  # a bigger number in the config does not raise the budget
    set_budget(ledger, FP[:8], 2.5)  # the owners' command
    reserve(ledger, 1.0, budget=1.5)
    assert ledger.status()[0].budget_epsilon == 2.5


def test_delta_budget_is_enforced(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    reserve_on(ledger, FP, 0.1, 6e-6, budget=10, budget_delta=1e-5, kind="train", description="t")
    with pytest.raises(BudgetExceededError, match="delta"):
        reserve_on(ledger, FP, 0.1, 6e-6, budget=10, budget_delta=1e-5, kind="train", description="t")


def _race(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        reserve(Ledger(path), 1.0, budget=3.5)
        results.put("ok")
    except BudgetExceededError:
        results.put("refused")


@pytest.mark.parametrize("as_url", [False, True])  # a file path, or the same file by SQLAlchemy URL
def test_processes_racing_for_the_last_budget_never_overspend(tmp_path, as_url):
    path = f"sqlite:///{tmp_path / 'ledger.sqlite'}" if as_url else str(tmp_path / "ledger.sqlite")
    open_budget(Ledger(path), FP, 3.5)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes.count("ok") == 3 and outcomes.count("refused") == 5
    (status,) = Ledger(path).status()
    assert status.reserved_epsilon == 3.0 and status.remaining_epsilon == pytest.approx(0.5)


def test_a_spend_above_the_reservation_is_recorded_and_raised(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    entry = reserve(ledger, 1.2, budget=1.3)
    with pytest.raises(BudgetExceededError, match="spent epsilon 2.7, more than its reservation 1.2"):
        ledger.record_spent(entry, 2.7)
    assert ledger.entry(entry)["spent_epsilon"] == 2.7 and ledger.status()[0].remaining_epsilon == 0  # the truth, not the plan


@pytest.mark.parametrize(("epsilon", "delta"), [(float("nan"), 1e-6), (float("inf"), 1e-6), (-1.0, 1e-6), (1.0, float("nan"))])
def test_non_finite_amounts_are_refused_before_the_budget_check(tmp_path, epsilon, delta):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with pytest.raises(LookalikeError, match="privacy.target_"):
        reserve(ledger, epsilon, delta=delta)
    assert ledger.status()[0].runs == 0
