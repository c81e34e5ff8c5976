"""The privacy ledger: a persistent, per-dataset epsilon budget in SQLite or any SQL database.

A run reserves its target epsilon before training inside a transaction that holds the budget's
lock (ledger_store.py), so two processes can never both read the same remaining budget and
overspend it. When it finishes it records what the accountant says it spent. A crash leaves the
reservation charged: no crash ever makes budget reappear. Finished runs whose mechanisms are
Gaussian are charged by their composed privacy curve (see composition.py); everything else
adds up at face value. Deltas add up.
"""

from __future__ import annotations

import json
import math
import time

from sqlalchemy import insert, or_, select, update

from lookalike.errors import BudgetExceededError, ConfigError, LookalikeError
from lookalike.privacy.budget_status import BudgetStatus, budget_statuses, entry_rows, read_budgets
from lookalike.privacy.composition import charge, gaussian_block
from lookalike.privacy.fingerprint import UsersKey
from lookalike.privacy.ledger_connection import LedgerConnection
from lookalike.privacy.ledger_store import BUDGETS, DATASETS, ENTRIES

TOLERANCE = 1e-9


def check_amount(epsilon: float, delta: float) -> None:
    """Refuse a non-finite or negative amount: ``charged + nan > budget`` is false, so a NaN
    would pass every budget check."""
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigError("privacy.target_epsilon", f"{epsilon} is not a finite, non-negative epsilon")
    if not (math.isfinite(delta) and 0 <= delta < 1):
        raise ConfigError("privacy.target_delta", f"{delta} is not a delta in [0, 1)")


def runs_fitting(remaining: float, epsilon: float) -> int:
    """How many reservations of ``epsilon`` fit in ``remaining`` (with :meth:`Ledger.reserve`'s
    tolerance, so an exactly fitting run counts); -1 when ``epsilon`` is not positive."""
    return int((remaining + TOLERANCE) // epsilon) if epsilon > 0 else -1


class Ledger(LedgerConnection):
    """One ledger (a file path or a SQLAlchemy URL); every method runs its own transaction, so
    processes and machines may share it."""

    def reserve(
        self,
        fingerprint: str,
        epsilon: float,
        delta: float,
        *,
        kind: str,
        description: str,
        attach: UsersKey | None = None,
        claim: str | None = None,
        plan: dict | None = None,
        also: tuple[str, ...] = (),
    ) -> int:
        """Atomically reserve ``epsilon`` (and ``delta``) on an existing budget or raise
        :class:`BudgetExceededError`. ``attach``: a new snapshot of the budget's users, recorded
        with the reservation so that later snapshots are recognised through it too. ``plan``:
        what the reservation covers, held by the entry (a resume is checked against it).
        ``also``: other budgets the run's users belong to: each must cover the same amount and
        gets a copy of the entry, closed with it (all or none are reserved)."""
        check_amount(epsilon, delta)
        now = time.time()
        # The slow part (a PRV composition) runs before the lock, on finished entries, which
        # never change again; whatever finishes meanwhile counts at face value below.
        self._ready(create=False)
        budgets = (fingerprint, *also)
        blocks = {fp: gaussian_block(self.entries(fp)) for fp in budgets}
        with self.transaction() as conn:
            for fp in budgets:
                self._check_covers(conn, fp, epsilon, delta, blocks[fp])
            if attach is not None and conn.execute(select(DATASETS.c.digest).where(DATASETS.c.digest == attach.digest)).first() is None:
                conn.execute(
                    insert(DATASETS).values(
                        digest=attach.digest,
                        fingerprint=fingerprint,
                        users=attach.users,
                        sketch=attach.to_json(),
                        created_at=now,
                        hashes=attach.hashes_bytes(),
                    )
                )
            row = dict(kind=kind, description=description, status="reserved", reserved_epsilon=epsilon, spent_epsilon=None, delta=delta)
            row |= dict(created_at=now, updated_at=now)
            plan_text = None if plan is None else json.dumps(plan, sort_keys=True)
            entry = int(conn.execute(insert(ENTRIES).values(fingerprint=fingerprint, claim=claim, plan=plan_text, **row)).inserted_primary_key[0])
            for fp in also:
                conn.execute(insert(ENTRIES).values(fingerprint=fp, parent=entry, **row))
            return entry

    def _check_covers(self, conn, fingerprint: str, epsilon: float, delta: float, block) -> None:
        budget = conn.execute(select(BUDGETS).where(BUDGETS.c.fingerprint == fingerprint).with_for_update()).first()
        if budget is None:
            raise LookalikeError(f"ledger '{self.path}' has no budget {fingerprint[:12]}: the data owners create one with lookalike-budget create")
        total_eps, total_delta = budget.budget_epsilon, budget.budget_delta
        current = charge(entry_rows(conn, fingerprint), block)
        charged, charged_delta = current.charged_epsilon, current.delta
        if charged + epsilon > total_eps + TOLERANCE:
            raise BudgetExceededError(
                f"privacy budget exhausted in ledger '{self.path}' for data {fingerprint[:12]}: this run needs epsilon {epsilon:.3g} "
                f"but only {max(total_eps - charged, 0):.3g} of {total_eps:.3g} remains ({current.reason}); lower privacy.target_epsilon or "
                "ask the data owners for more budget (lookalike-budget set-budget)"
            )
        if total_delta is not None and charged_delta + delta > total_delta * (1 + 1e-9):
            raise BudgetExceededError(
                f"privacy budget exhausted in ledger '{self.path}' for data {fingerprint[:12]}: delta {delta:.3g} exceeds "
                f"the remaining {max(total_delta - charged_delta, 0):.3g} of {total_delta:.3g}; lower privacy.target_delta"
            )

    def note(self, entry_id: int, key: str, value) -> None:
        """Write ``value`` under ``key`` into an open reservation's plan, once: a release made
        under the reservation (the size estimate) that a resumed run must reuse, not redraw."""
        self._ready(create=False)
        with self.transaction() as conn:
            row = conn.execute(select(ENTRIES.c.plan, ENTRIES.c.status).where(ENTRIES.c.id == entry_id)).first()
            if row is None or row.status != "reserved":
                raise LookalikeError(f"ledger '{self.path}': entry {entry_id} is not an open reservation")
            plan = json.loads(row.plan) if row.plan else {}
            if key in plan:
                raise LookalikeError(f"ledger '{self.path}': entry {entry_id} already holds its {key}; a release is made once per reservation")
            plan[key] = value
            conn.execute(update(ENTRIES).where(ENTRIES.c.id == entry_id).values(plan=json.dumps(plan, sort_keys=True)))

    def released_model(self, digest: str) -> dict | None:
        """The finished training entry that released the model with weights ``digest``
        (model/bundle.py weights_digest), or None: no DP run of this ledger released it."""
        self._ready(create=False)
        with self.transaction(write=False) as conn:
            rows = conn.execute(
                select(ENTRIES).where(ENTRIES.c.kind == "train", ENTRIES.c.status == "spent", ENTRIES.c.plan.contains(digest)).order_by(ENTRIES.c.id)
            ).mappings()
            found = [dict(r) for r in rows if json.loads(r["plan"]).get("model") == digest]
        return found[0] if found else None

    def plan(self, entry_id: int) -> dict:
        """What the reservation covers (empty for entries written before plans were kept)."""
        text = self.entry(entry_id).get("plan")
        return json.loads(text) if text else {}

    def record_spent(self, entry_id: int, epsilon: float, events: list | None = None) -> None:
        """Close a reservation with the epsilon actually spent (never below zero). ``events``:
        the mechanism as (noise multiplier, sample rate, steps) Gaussian steps, or None when it
        is not only Gaussian; it lets runs be composed more tightly than by summing.

        A spend above the reservation is a bug or a tampered run: it is recorded as spent (the
        ledger must hold the truth) and raised, never passed over."""
        epsilon = float(epsilon)
        if not math.isfinite(epsilon):
            raise LookalikeError(f"ledger '{self.path}': entry {entry_id} cannot record a spend of {epsilon}: the run's accounting failed")
        reserved = float(self.entry(entry_id)["reserved_epsilon"])
        self._close(entry_id, "spent", max(epsilon, 0.0), None if events is None else json.dumps([list(e) for e in events]))
        if epsilon > reserved + TOLERANCE:
            raise BudgetExceededError(
                f"ledger '{self.path}': entry {entry_id} spent epsilon {epsilon:.4g}, more than its reservation "
                f"{reserved:.4g}; the spend is recorded and the budget may be overdrawn"
            )

    def take_over(self, entry_id: int, expected: str | None, claim: str | None) -> None:
        """Move an open reservation to a resuming process, atomically: only from the claim the
        checkpoint carries, so the same checkpoint resumed twice trains once (the second finds
        the claim already moved and is refused)."""
        self._ready(create=False)
        with self.transaction() as conn:
            moved = conn.execute(
                update(ENTRIES)
                .where(ENTRIES.c.id == entry_id, ENTRIES.c.status == "reserved", ENTRIES.c.claim.is_(None) if expected is None else ENTRIES.c.claim == expected)
                .values(claim=claim, updated_at=time.time())
            ).rowcount
        if moved != 1:
            raise LookalikeError(
                f"ledger '{self.path}': entry {entry_id} was resumed by another process (or from a later checkpoint); resume from that run's newest checkpoint"
            )

    def release(self, entry_id: int) -> None:
        """Give a reservation back; only for runs that never touched the data with a DP step."""
        self._close(entry_id, "released", 0.0)

    def _close(self, entry_id: int, status: str, epsilon: float, events: str | None = None) -> None:
        self._ready(create=False)
        with self.transaction() as conn:
            # The entry and its copies on the other budgets the run touched close together.
            updated = conn.execute(
                update(ENTRIES)
                .where(or_(ENTRIES.c.id == entry_id, ENTRIES.c.parent == entry_id), ENTRIES.c.status == "reserved")
                .values(status=status, spent_epsilon=epsilon, events=events, updated_at=time.time())
            ).rowcount
        if updated < 1:
            raise LookalikeError(f"ledger '{self.path}': entry {entry_id} is not an open reservation")

    def entry(self, entry_id: int) -> dict:
        self._ready(create=False)
        with self.transaction(write=False) as conn:
            row = conn.execute(select(ENTRIES).where(ENTRIES.c.id == entry_id)).mappings().first()
        if row is None:
            raise LookalikeError(f"ledger '{self.path}': no entry {entry_id}")
        return dict(row)

    def remaining(self, fingerprint: str) -> float:
        """Epsilon still available on the budget ``fingerprint``."""
        self._ready(create=False)
        with self.transaction(write=False) as conn:
            row = conn.execute(select(BUDGETS.c.budget_epsilon).where(BUDGETS.c.fingerprint == fingerprint)).first()
            entries = entry_rows(conn, fingerprint)
        if row is None:
            raise LookalikeError(f"ledger '{self.path}' has no budget {fingerprint[:12]}: the data owners create one with lookalike-budget create")
        return max(row[0] - charge(entries, gaussian_block(entries)).charged_epsilon, 0.0)

    def runs_that_fit(self, fingerprint: str, epsilon: float) -> tuple[int, float]:
        """Read-only: how many more reservations of ``epsilon`` the budget covers now (the
        same tolerance as :meth:`reserve`), and the epsilon remaining."""
        remaining = self.remaining(fingerprint)
        return runs_fitting(remaining, epsilon), remaining

    def entries(self, fingerprint: str) -> list[dict]:
        self._ready(create=False)
        with self.transaction(write=False) as conn:
            return entry_rows(conn, fingerprint)

    def status(self) -> list[BudgetStatus]:
        self._ready(create=False)
        with self.transaction(write=False) as conn:
            budgets, entries = read_budgets(conn)
        return budget_statuses(budgets, entries)
