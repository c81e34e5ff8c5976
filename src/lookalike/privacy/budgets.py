"""Budgets and rules: created and changed by the data owners, looked up by every run.

A budget covers a set of publisher users (fingerprint.py). The owners create it for their data
(``lookalike-budget create``) with its total (epsilon, delta) and the clean-room rules; a run
finds the budget whose users hold most of its own, or is refused. Nothing here is reachable from
``lookalike-train`` or ``lookalike-export`` except the read-only :func:`find_budget`: the
operator can neither create, renew nor loosen a budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.fingerprint import SHARED_USERS, UsersKey
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import BUDGETS, DATASETS, lock_budgets
from lookalike.privacy.rules import Rules


@dataclass(frozen=True)
class BudgetMatch:
    fingerprint: str  # the budget's key
    rules: Rules
    share: float  # estimated share of the run's users in the budget's data (1.0: the same users)
    new_snapshot: UsersKey | None  # the run's users, when they are not yet a dataset of the budget


def _datasets(ledger: Ledger) -> list[tuple[str, UsersKey]]:
    with ledger.transaction(write=False) as conn:
        return _datasets_in(conn)


def _datasets_in(conn) -> list[tuple[str, UsersKey]]:
    rows = conn.execute(select(DATASETS.c.digest, DATASETS.c.fingerprint, DATASETS.c.sketch)).all()
    return [(fp, UsersKey.from_json(digest, sketch)) for digest, fp, sketch in rows]


def _covering(datasets: list[tuple[str, UsersKey]], key: UsersKey) -> list[tuple[float, str]]:
    """(share, fingerprint) of each budget holding most of these users, the best first."""
    best: dict[str, float] = {}
    for fingerprint, known in datasets:
        share = 1.0 if known.digest == key.digest else key.share_in(known)
        best[fingerprint] = max(best.get(fingerprint, 0.0), share)
    return sorted(((share, fp) for fp, share in best.items() if share >= SHARED_USERS), reverse=True)


def find_budget(ledger: Ledger, key: UsersKey) -> BudgetMatch:
    """Read-only: the budget that covers these users, or a one-line refusal."""
    if not ledger.exists():
        raise LookalikeError(
            f"ledger '{ledger.path}' does not exist: the data owners create the ledger and a budget for their data "
            "with lookalike-budget create (or set ledger.path to theirs)"
        )
    ledger._ready(create=False)
    datasets = _datasets(ledger)
    matches = _covering(datasets, key)
    if not matches:
        raise LookalikeError(
            f"ledger '{ledger.path}' has no budget for this publisher data ({key.users} users): the data owners "
            "create one with lookalike-budget create --publisher <path>"
        )
    if len(matches) > 1:
        raise LookalikeError(
            f"ledger '{ledger.path}': this publisher data shares most of its users with two budgets "
            f"({matches[0][1][:12]}, {matches[1][1][:12]}); the data owners must retire one before it is used"
        )
    share, fingerprint = matches[0]
    known_digests = {k.digest for fp, k in datasets if fp == fingerprint}
    with ledger.transaction(write=False) as conn:
        rules = conn.execute(select(BUDGETS.c.rules).where(BUDGETS.c.fingerprint == fingerprint)).scalar_one()
    return BudgetMatch(fingerprint, Rules.from_json(rules), share, None if key.digest in known_digests else key)


def create_budget(ledger: Ledger, key: UsersKey, epsilon: float, delta: float | None, rules: Rules) -> str:
    """A new budget for these users. Refused where the users overlap a budget that exists: a
    new snapshot draws on its old budget (renew that one with :func:`set_budget`)."""
    return _create(ledger, key, epsilon, delta, rules, if_missing=False)[0]


def create_budget_if_missing(ledger: Ledger, key: UsersKey, epsilon: float, delta: float | None, rules: Rules) -> tuple[str, bool]:
    """The budget that covers these users, created unless one does: (fingerprint, created).
    Looking and creating are one transaction under the ledger's write lock, so of two owners'
    scripts (or two torchrun ranks) racing on a fresh ledger one creates and the other finds it;
    looking first and creating in a second transaction let the later one see its own users
    "already covered" and fail."""
    return _create(ledger, key, epsilon, delta, rules, if_missing=True)


def _create(ledger: Ledger, key: UsersKey, epsilon: float, delta: float | None, rules: Rules, if_missing: bool) -> tuple[str, bool]:
    _check_total(epsilon, delta)
    ledger._ready(create=True)
    now = time.time()
    with ledger.transaction() as conn:
        lock_budgets(conn)  # SQLite's BEGIN IMMEDIATE holds the lock already; other databases take it here
        datasets = _datasets_in(conn)
        covering = _covering(datasets, key)
        if if_missing and len(covering) == 1:
            return covering[0][1], False
        for fingerprint, known in datasets:
            share = max(key.share_in(known), known.share_in(key), 1.0 if known.digest == key.digest else 0.0)
            if share >= SHARED_USERS:
                raise LookalikeError(
                    f"ledger '{ledger.path}': about {share:.0%} of these users are already covered by budget {fingerprint[:12]}; "
                    "add this data to it with lookalike-budget attach, and renew it with set-budget"
                )
        conn.execute(insert(BUDGETS).values(fingerprint=key.digest, budget_epsilon=epsilon, budget_delta=delta, created_at=now, rules=rules.to_json()))
        conn.execute(insert(DATASETS).values(digest=key.digest, fingerprint=key.digest, users=key.users, sketch=key.to_json(), created_at=now))
    return key.digest, True


def attach_snapshot(ledger: Ledger, prefix: str, key: UsersKey) -> str:
    """Add a snapshot of users to an existing budget (a table that grew, say): runs on it then
    draw on that budget. Refused where the snapshot shares most users with another budget."""
    ledger._ready(create=False)
    with ledger.transaction(write=False) as conn:
        fingerprint = _unique(ledger, prefix, conn)
    for other, known in _datasets(ledger):
        if other != fingerprint and max(key.share_in(known), known.share_in(key)) >= SHARED_USERS:
            raise LookalikeError(f"ledger '{ledger.path}': these users are mostly covered by budget {other[:12]} too; attach them there")
    with ledger.transaction() as conn:
        if conn.execute(select(DATASETS.c.digest).where(DATASETS.c.digest == key.digest)).first() is None:
            conn.execute(insert(DATASETS).values(digest=key.digest, fingerprint=fingerprint, users=key.users, sketch=key.to_json(), created_at=time.time()))
    return fingerprint


def _unique(ledger: Ledger, prefix: str, conn) -> str:
    matches = conn.execute(select(BUDGETS.c.fingerprint).where(BUDGETS.c.fingerprint.startswith(prefix))).all()
    if len(matches) != 1:
        raise LookalikeError(f"ledger '{ledger.path}': fingerprint '{prefix}' matches {len(matches)} budgets; give more of it")
    return matches[0][0]


def set_budget(ledger: Ledger, prefix: str, epsilon: float, delta: float | None = None) -> str:
    """Change a budget's total (renew it): a deliberate act by the data owners. ``delta`` None
    keeps the budget's delta cap: renewing epsilon must not lift it."""
    _check_total(epsilon, delta)
    ledger._ready(create=False)
    with ledger.transaction() as conn:
        fingerprint = _unique(ledger, prefix, conn)
        totals = {"budget_epsilon": epsilon} | ({} if delta is None else {"budget_delta": delta})
        conn.execute(update(BUDGETS).where(BUDGETS.c.fingerprint == fingerprint).values(**totals))
    return fingerprint


def set_rules(ledger: Ledger, prefix: str, **changes) -> Rules:
    """Change a budget's rules (None leaves a rule as it is)."""
    ledger._ready(create=False)
    with ledger.transaction() as conn:
        fingerprint = _unique(ledger, prefix, conn)
        stored = conn.execute(select(BUDGETS.c.rules).where(BUDGETS.c.fingerprint == fingerprint)).scalar_one()
        rules = Rules.from_json(stored).with_changes(**changes)
        conn.execute(update(BUDGETS).where(BUDGETS.c.fingerprint == fingerprint).values(rules=rules.to_json()))
    return rules


def _check_total(epsilon: float, delta: float | None) -> None:
    if not (epsilon == epsilon and 0 < epsilon < float("inf")):
        raise ConfigError("epsilon", f"{epsilon} must be a positive, finite number")
    if delta is not None and not 0 < delta < 1:
        raise ConfigError("--delta", f"{delta} must be in (0, 1)")
