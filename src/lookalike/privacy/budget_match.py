"""Which budgets a run's users belong to: its home budget, and every other budget it shares even
one user with. The run is charged on all of them and bound by the tightest of their rules.

An audit escaped an owner's budget and rules twice with a one-budget match: a file holding two
owners' tables (A 60%, B 40%) was charged to A alone and never read B's rules; a table of B's
2,048 sketched users plus most of A's was matched to B "about 100%" by the sketch. Membership is
now exact: every dataset stores its users' keyed hashes (fingerprint.py), less those another
budget already held, so each user belongs to one budget and a run's overlap with each budget is
a count, not an estimate. Datasets stored before hashes were fall back to the sketch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import select

from lookalike.errors import LookalikeError
from lookalike.privacy.fingerprint import KEY_VERSION, SHARED_USERS, UsersKey, stored_hashes
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import BUDGETS, DATASETS
from lookalike.privacy.rules import Rules, tightest


@dataclass(frozen=True)
class BudgetMatch:
    fingerprint: str  # the home budget: it holds the largest share of the run's users
    rules: Rules  # the tightest rules among the home budget and every budget in ``also``
    share: float  # share of the run's users in the home budget's data (1.0: the same users)
    new_snapshot: UsersKey | None  # the run's users to add to the home budget, less other budgets' users
    also: tuple[str, ...] = ()  # every other budget holding some of the run's users: charged too


def load_datasets(ledger: Ledger) -> dict[str, list[UsersKey]]:
    """Every budget's datasets, with their stored hashes where they have them."""
    with ledger.transaction(write=False) as conn:
        return datasets_in(conn, ledger.path)


def datasets_in(conn, where: str) -> dict[str, list[UsersKey]]:
    """:func:`load_datasets` inside a transaction the caller holds (creation, under its lock).
    Refused while a dataset is keyed by an older hash than this version computes: its users
    would match nobody, and a run on them would be charged elsewhere or get a fresh budget."""
    held = stored_datasets(conn)
    old = [(fp, d) for fp, datasets in held.items() for d in datasets if d.version != KEY_VERSION]
    if old:
        raise LookalikeError(
            f"ledger '{where}' keys {len(old)} dataset(s) (budget {old[0][0][:12]} first) by the version-{old[0][1].version} user hash, which "
            f"this version replaced: the data owners re-key them with lookalike-budget rekey --publisher <each table they were created or attached from>"
        )
    return held


def stored_datasets(conn) -> dict[str, list[UsersKey]]:
    """Every budget's datasets as stored, whatever their key's version (rekey.py reads them too)."""
    rows = conn.execute(select(DATASETS.c.digest, DATASETS.c.fingerprint, DATASETS.c.sketch, DATASETS.c.hashes)).all()
    held: dict[str, list[UsersKey]] = {}
    for digest, fingerprint, sketch, blob in rows:
        held.setdefault(fingerprint, []).append(replace(UsersKey.from_json(digest, sketch), hashes=stored_hashes(blob)))
    return held


def shared_users(key: UsersKey, datasets: list[UsersKey]) -> int:
    """How many of ``key``'s users a budget's datasets hold: exact from stored hashes, estimated
    from the sketch for a dataset stored before hashes were (and all of them for the same set)."""
    if any(d.digest == key.digest for d in datasets):
        return key.users
    exact = [key.shared_with(d.hashes) for d in datasets if d.hashes is not None]
    count = int(np.unique(np.concatenate(exact)).size) if exact else 0
    estimated = [round(key.share_in(d) * key.users) for d in datasets if d.hashes is None]
    return max([count, *estimated])


def other_hashes(held: dict[str, list[UsersKey]], fingerprint: str | None) -> list[np.ndarray]:
    """The stored hashes of every budget but ``fingerprint``: what a new snapshot leaves out."""
    return [d.hashes for fp, datasets in held.items() if fp != fingerprint for d in datasets if d.hashes is not None]


def find_budget(ledger: Ledger, key: UsersKey) -> BudgetMatch:
    """Read-only: the budgets these users belong to, or a one-line refusal."""
    if not ledger.exists():
        raise LookalikeError(
            f"ledger '{ledger.path}' does not exist: the data owners create the ledger and a budget for their data "
            "with lookalike-budget create (or set ledger.path to theirs)"
        )
    ledger._ready(create=False)
    held = load_datasets(ledger)
    counts = {fp: shared_users(key, datasets) for fp, datasets in held.items()}
    touched = sorted(((n, fp) for fp, n in counts.items() if n > 0), reverse=True)
    homes = [(n, fp) for n, fp in touched if n >= SHARED_USERS * key.users]
    if not homes:
        raise LookalikeError(
            f"ledger '{ledger.path}' has no budget for this publisher data ({key.users} users): the data owners "
            "create one with lookalike-budget create --publisher <path>"
        )
    if len(homes) > 1:
        raise LookalikeError(
            f"ledger '{ledger.path}': this publisher data shares most of its users with two budgets "
            f"({homes[0][1][:12]}, {homes[1][1][:12]}); the data owners must retire one before it is used"
        )
    fingerprint = homes[0][1]
    also = tuple(fp for _, fp in touched if fp != fingerprint)
    with ledger.transaction(write=False) as conn:
        stored = dict(conn.execute(select(BUDGETS.c.fingerprint, BUDGETS.c.rules).where(BUDGETS.c.fingerprint.in_((fingerprint, *also)))).all())
    rules = tightest([Rules.from_json(stored[fp]) for fp in (fingerprint, *also)])
    known = any(d.digest == key.digest for d in held[fingerprint])
    snapshot = None if known else key.without(other_hashes(held, fingerprint))
    return BudgetMatch(fingerprint, rules, homes[0][0] / max(key.users, 1), snapshot, also)
