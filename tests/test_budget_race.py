"""`lookalike-budget create --if-missing` raced by real processes on one ledger: one creates the
budget, every other finds it and exits 0 (issue 22 item 14: torchrun ranks, or two owners'
scripts, each creating the budget they need)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, insert, text

from lookalike.cli.budget import publisher_users
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import BUDGETS, DATASETS
from lookalike.privacy.rules import Rules


def _create(ledger: str, publisher) -> subprocess.Popen:
    command = [sys.executable, "-m", "lookalike.cli.budget", "--ledger", ledger, "create", "--publisher", str(publisher), "--epsilon", "5", "--if-missing"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outcomes(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, out + err) for p, (out, err) in zip(procs, outs)]


def test_processes_racing_create_if_missing_make_one_budget(ledger_location, demo_dir):
    # A fresh ledger: the schema is created in the race too.
    outcomes = _outcomes([_create(ledger_location, demo_dir / "publisher") for _ in range(4)])
    assert [code for code, _ in outcomes] == [0] * 4, outcomes
    assert sum("created for" in out for _, out in outcomes) == 1, outcomes
    assert sum("already covers these users; nothing changed" in out for _, out in outcomes) == 3, outcomes
    (status,) = Ledger(ledger_location).status()
    assert status.budget_epsilon == 5 and status.runs == 0


def test_create_if_missing_waits_for_a_budget_being_created_and_finds_it(postgres_server, demo_dir):
    """The interleaving that failed, made certain: another owner's budget for the same users is
    inserted but not committed while three processes run create --if-missing. PostgreSQL shows
    when all three wait on a lock (pg_locks); then the budget commits. Checking in one
    transaction and creating in another, each had read "no budget" before it waited, and then
    failed on the commit; under the lock each waits first and then finds the budget."""
    location = postgres_server.new_database()
    Ledger(location)._ready(create=True)
    key = publisher_users(str(demo_dir / "publisher"), "user_id")
    now, engine = time.time(), create_engine(location)
    try:
        with engine.begin() as conn:
            conn.execute(insert(BUDGETS).values(fingerprint=key.digest, budget_epsilon=7.0, budget_delta=None, created_at=now, rules=Rules().to_json()))
            conn.execute(insert(DATASETS).values(digest=key.digest, fingerprint=key.digest, users=key.users, sketch=key.to_json(), created_at=now))
            procs = [_create(location, demo_dir / "publisher") for _ in range(3)]
            _wait_until_waiting(conn, procs)
        outcomes = _outcomes(procs)
    finally:
        engine.dispose()
    assert [code for code, _ in outcomes] == [0] * 3, outcomes
    assert all(f"budget {key.digest[:12]} already covers these users; nothing changed" in out for _, out in outcomes), outcomes
    (status,) = Ledger(location).status()
    assert status.budget_epsilon == 7.0  # the first owner's budget, no second one


def _wait_until_waiting(conn, procs: list[subprocess.Popen]) -> None:
    """Until every process's connection waits on a lock that this transaction holds (a condition
    the server reports, not a pause); a process that exits instead fails the test."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        waiting = conn.execute(text("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")).scalar_one()
        if waiting == len(procs):
            return
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            pytest.fail(f"a process ended before it waited for the lock: {ended[0].returncode}, {ended[0].communicate()}")
        time.sleep(0.05)
    pytest.fail("the processes did not reach the ledger's lock in 300 s")
