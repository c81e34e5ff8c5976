"""Budgets and rules: created and changed by the data owners, looked up by every run.

A budget covers a set of publisher users (fingerprint.py). The owners create it for their data
(``lookalike-budget create``) with its total (epsilon, delta) and the clean-room rules; a run
finds the budget whose users hold most of its own, or is refused. Nothing here is reachable from
``lookalike-train`` or ``lookalike-export`` except the read-only :func:`find_budget`: the
operator can neither create, renew nor loosen a budget.
"""

from __future__ import annotations

import time

from sqlalchemy import insert, select, update

from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.budget_match import datasets_in, load_datasets, other_hashes, shared_users
from lookalike.privacy.fingerprint import SHARED_USERS, UsersKey
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import BUDGETS, DATASETS, lock_budgets
from lookalike.privacy.rules import Rules


def create_budget(ledger: Ledger, key: UsersKey, epsilon: float, delta: float | None, rules: Rules) -> str:
    """A new budget for these users. Refused where the users overlap a budget that exists: a
    new snapshot draws on its old budget (renew that one with :func:`set_budget`). ``delta``
    None leaves the total delta uncapped; the owners' command caps it by default
    (:func:`default_delta`). Users another budget holds stay that budget's (runs on them are
    charged on both)."""
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
        held = datasets_in(conn, ledger.path)
        covering = [fp for fp, datasets in held.items() if shared_users(key, datasets) >= SHARED_USERS * key.users]
        if if_missing and len(covering) == 1:
            return covering[0], False
        for fingerprint, datasets in held.items():
            shared = shared_users(key, datasets)
            share = max(shared / max(key.users, 1), max(shared / max(d.users, 1) for d in datasets))
            if share >= SHARED_USERS:
                raise LookalikeError(
                    f"ledger '{ledger.path}': about {share:.0%} of these users are already covered by budget {fingerprint[:12]}; "
                    "add this data to it with lookalike-budget attach, and renew it with set-budget"
                )
        conn.execute(insert(BUDGETS).values(fingerprint=key.digest, budget_epsilon=epsilon, budget_delta=delta, created_at=now, rules=rules.to_json()))
        conn.execute(insert(DATASETS).values(**_dataset_row(key, key.digest, other_hashes(held, None), now)))
    return key.digest, True


def _dataset_row(key: UsersKey, fingerprint: str, leave_out: list, now: float) -> dict:
    return dict(digest=key.digest, fingerprint=fingerprint, users=key.users, sketch=key.to_json(), created_at=now, hashes=key.without(leave_out).hashes_bytes())


def default_delta(users: int) -> float:
    """A new budget's total delta unless the owners give one: 1/R for its R users (at most
    0.1). The deltas of its runs add up, and a total near 1/R is where a guarantee stops
    meaning anything."""
    return min(1.0 / max(users, 1), 0.1)


def attach_snapshot(ledger: Ledger, prefix: str, key: UsersKey) -> str:
    """Add a snapshot of users to an existing budget (a table that grew, say): runs on it then
    draw on that budget. Refused where the snapshot shares no user with the budget, or most of
    its users are another budget's (attaching would move them out of their owners' reach)."""
    ledger._ready(create=False)
    with ledger.transaction(write=False) as conn:
        fingerprint = _unique(ledger, prefix, conn)
    held = load_datasets(ledger)
    if shared_users(key, held.get(fingerprint, [])) == 0:
        raise LookalikeError(f"ledger '{ledger.path}': these users share no user with budget {fingerprint[:12]}; a new table gets a budget of its own (create)")
    for other, datasets in held.items():
        if other != fingerprint and shared_users(key, datasets) >= SHARED_USERS * key.users:
            raise LookalikeError(f"ledger '{ledger.path}': these users are mostly covered by budget {other[:12]}; attach them there")
    with ledger.transaction() as conn:
        if conn.execute(select(DATASETS.c.digest).where(DATASETS.c.digest == key.digest)).first() is None:
            conn.execute(insert(DATASETS).values(**_dataset_row(key, fingerprint, other_hashes(held, fingerprint), time.time())))
    return fingerprint


def _unique(ledger: Ledger, prefix: str, conn) -> str:
    # An empty prefix would pick the only budget there is, whichever it is: the owners name it.
    if not prefix.strip():
        raise LookalikeError(f"ledger '{ledger.path}': the fingerprint is empty: give a budget's fingerprint or a unique prefix (lookalike-budget lists them)")
    # autoescape: '%' and '_' in a prefix are characters, not LIKE wildcards matching any budget.
    matches = conn.execute(select(BUDGETS.c.fingerprint).where(BUDGETS.c.fingerprint.startswith(prefix, autoescape=True))).all()
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
