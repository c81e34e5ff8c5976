"""The privacy ledger: reservations, refusals, crashes, and real processes racing for budget."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from lookalike.errors import BudgetExceededError, LookalikeError
from lookalike.privacy.budgets import set_budget
from lookalike.privacy.ledger import Ledger
from tests.ledger_helpers import open_budget, reserve_on

FP = "f" * 64


def reserve(ledger: Ledger, eps: float, budget: float = 3.0, delta: float = 1e-6) -> int:
    return reserve_on(ledger, FP, eps, delta, budget=budget, budget_delta=None, kind="train", description="test")


def test_reserve_spend_and_refuse(ledger_location):
    ledger = Ledger(ledger_location)
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


def test_a_crashed_run_stays_charged_and_release_is_explicit(ledger_location):
    ledger = Ledger(ledger_location)
    crashed = reserve(ledger, 1.0)  # never closed, as after a crash
    released = reserve(ledger, 1.0)
    ledger.release(released)
    (status,) = ledger.status()
    assert status.reserved_epsilon == 1.0 and status.remaining_epsilon == 2.0
    assert ledger.entry(crashed)["status"] == "reserved" and ledger.entry(released)["status"] == "released"


def test_budget_is_fixed_at_first_use_and_changed_only_deliberately(ledger_location):
    ledger = Ledger(ledger_location)
    reserve(ledger, 1.0, budget=1.5)
    with pytest.raises(BudgetExceededError):
        reserve(ledger, 1.0, budget=100.0)  # a bigger number in the config does not raise the budget
    set_budget(ledger, FP[:8], 2.5)  # the owners' command
    reserve(ledger, 1.0, budget=1.5)
    assert ledger.status()[0].budget_epsilon == 2.5


def test_renewing_epsilon_keeps_the_delta_cap(ledger_location):
    """set-budget with an epsilon alone once lifted the delta cap (None: uncapped)."""
    ledger = Ledger(ledger_location)
    reserve_on(ledger, FP, 0.1, 6e-6, budget=10, budget_delta=1e-5, kind="train", description="t")
    set_budget(ledger, FP[:8], 20.0)
    assert ledger.status()[0].budget_delta == 1e-5 and ledger.status()[0].budget_epsilon == 20.0
    with pytest.raises(BudgetExceededError, match="delta"):
        ledger.reserve(FP, 0.1, 6e-6, kind="train", description="t")
    set_budget(ledger, FP[:8], 20.0, 1e-4)  # a deliberate new cap
    assert ledger.status()[0].budget_delta == 1e-4


def test_delta_budget_is_enforced(ledger_location):
    ledger = Ledger(ledger_location)
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


@pytest.mark.parametrize("as_url", [False, True])  # a file path, or by SQLAlchemy URL (SQLite or PostgreSQL)
def test_processes_racing_for_the_last_budget_never_overspend(ledger_location, as_url):
    postgres = ledger_location.startswith("postgresql")
    if postgres and not as_url:
        pytest.skip("a PostgreSQL ledger is only ever a URL")
    path = f"sqlite:///{ledger_location}" if as_url and not postgres else ledger_location
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


def test_a_spend_above_the_reservation_is_recorded_and_raised(ledger_location):
    ledger = Ledger(ledger_location)
    entry = reserve(ledger, 1.2, budget=1.3)
    with pytest.raises(BudgetExceededError, match="spent epsilon 2.7, more than its reservation 1.2"):
        ledger.record_spent(entry, 2.7)
    assert ledger.entry(entry)["spent_epsilon"] == 2.7 and ledger.status()[0].remaining_epsilon == 0  # the truth, not the plan


@pytest.mark.parametrize(("epsilon", "delta"), [(float("nan"), 1e-6), (float("inf"), 1e-6), (-1.0, 1e-6), (1.0, float("nan"))])
def test_non_finite_amounts_are_refused_before_the_budget_check(ledger_location, epsilon, delta):
    ledger = Ledger(ledger_location)
    with pytest.raises(LookalikeError, match="privacy.target_"):
        reserve(ledger, epsilon, delta=delta)
    assert ledger.status()[0].runs == 0


def test_one_reservation_is_resumed_by_one_process(ledger_location):
    """The same checkpoint resumed twice at once trained twice and was charged once."""
    ledger = Ledger(ledger_location)
    entry = reserve_on(ledger, FP, 1.0, 1e-6, budget=3.0)
    ledger._ready()
    from lookalike.privacy.ledger_store import ENTRIES

    with ledger.engine.begin() as conn:
        conn.execute(ENTRIES.update().where(ENTRIES.c.id == entry).values(claim="run-a"))
    ledger.take_over(entry, "run-a", "resume-1")  # the first resume takes the checkpoint's claim
    with pytest.raises(LookalikeError, match="was resumed by another process"):
        ledger.take_over(entry, "run-a", "resume-2")  # the second, from the same checkpoint, is refused
    ledger.take_over(entry, "resume-1", "resume-3")  # a later checkpoint of the first resume may continue
    ledger.record_spent(entry, 0.9)
    with pytest.raises(LookalikeError):
        ledger.take_over(entry, "resume-3", "resume-4")  # a finished reservation is resumed by nobody


@pytest.mark.parametrize("damage", ["corrupt", "folder", "deleted"])  # (read-only files do not stop root, who runs CI)
def test_a_damaged_ledger_is_one_line_and_never_recreated(cfg_factory, tmp_path, damage):
    """A deleted ledger was silently re-created empty (every budget reset); a corrupt or
    read-only one raised tracebacks. Runs never create a ledger: only the owners' command does."""
    from lookalike.training.train import run

    cfg = cfg_factory(out=tmp_path / "out")
    path = tmp_path / "out" / "privacy_ledger.sqlite"
    if damage == "corrupt":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
    with pytest.raises(LookalikeError) as err:
        run(cfg)
    assert "\n" not in str(err.value) and "ledger" in str(err.value)
    assert damage != "deleted" or not path.exists()
