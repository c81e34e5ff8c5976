"""The privacy ledger: a persistent, per-dataset epsilon budget in SQLite.

A run reserves its target epsilon before training inside a ``BEGIN IMMEDIATE`` transaction, so
two processes can never both read the same remaining budget and overspend it. When it finishes
it records what the accountant says it spent. A crash leaves the reservation charged: no crash
ever makes budget reappear. Finished runs whose mechanisms are Gaussian are charged by their
composed privacy curve (see composition.py); everything else adds up at face value. Deltas add up.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from lookalike.errors import BudgetExceededError, LookalikeError
from lookalike.privacy.composition import GaussianBlock, charge, gaussian_block

SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    fingerprint TEXT PRIMARY KEY,
    budget_epsilon REAL NOT NULL,
    budget_delta REAL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL REFERENCES budgets(fingerprint),
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'spent', 'released')),
    reserved_epsilon REAL NOT NULL,
    spent_epsilon REAL,
    delta REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    events TEXT
);
"""
TOLERANCE = 1e-9


@dataclass(frozen=True)
class BudgetStatus:
    fingerprint: str
    budget_epsilon: float
    budget_delta: float | None
    spent_epsilon: float  # finished entries, summed
    reserved_epsilon: float  # open reservations
    spent_delta: float
    runs: int
    charged_epsilon: float  # what the ledger enforces: finished Gaussian runs composed, the rest summed
    composition: str

    @property
    def remaining_epsilon(self) -> float:
        return max(self.budget_epsilon - self.charged_epsilon, 0.0)

    def to_dict(self) -> dict:
        return asdict(self) | {"remaining_epsilon": self.remaining_epsilon}


class Ledger:
    """One SQLite file; every method opens its own connection, so processes may share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _connect(self, create: bool = True) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise LookalikeError(f"ledger '{self.path}' does not exist: set ledger.path (or --ledger) to an existing ledger")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves to take the write lock up front.
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.executescript(SCHEMA)
            # Ledgers written before entries carried their mechanism get the column added.
            if "events" not in {row[1] for row in conn.execute("PRAGMA table_info(entries)")}:
                conn.execute("ALTER TABLE entries ADD COLUMN events TEXT")
            yield conn
        finally:
            conn.close()

    def reserve(self, fingerprint: str, epsilon: float, delta: float, *, budget_epsilon: float,
                budget_delta: float | None, kind: str, description: str) -> int:
        """Atomically reserve ``epsilon`` (and ``delta``) or raise :class:`BudgetExceededError`."""
        now = time.time()
        # The slow part (a PRV composition) runs before the write lock, on finished entries,
        # which never change again; whatever finishes meanwhile counts at face value below.
        block = gaussian_block(self.entries(fingerprint)) if self.path.exists() else GaussianBlock(frozenset(), 0.0, 0.0, 0.0)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO budgets VALUES (?, ?, ?, ?)", (fingerprint, budget_epsilon, budget_delta, now))
                total_eps, total_delta = conn.execute("SELECT budget_epsilon, budget_delta FROM budgets WHERE fingerprint = ?", (fingerprint,)).fetchone()
                current = charge(self._rows(conn, fingerprint), block)
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
                cur = conn.execute(
                    "INSERT INTO entries (fingerprint, kind, description, status, reserved_epsilon, spent_epsilon, delta, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'reserved', ?, NULL, ?, ?, ?)",
                    (fingerprint, kind, description, epsilon, delta, now, now),
                )
                conn.execute("COMMIT")
                return int(cur.lastrowid)
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def record_spent(self, entry_id: int, epsilon: float, events: list | None = None) -> None:
        """Close a reservation with the epsilon actually spent (never below zero). ``events``:
        the mechanism as (noise multiplier, sample rate, steps) Gaussian steps, or None when it
        is not only Gaussian; it lets runs be composed more tightly than by summing."""
        self._close(entry_id, "spent", max(float(epsilon), 0.0), None if events is None else json.dumps([list(e) for e in events]))

    def release(self, entry_id: int) -> None:
        """Give a reservation back; only for runs that never touched the data with a DP step."""
        self._close(entry_id, "released", 0.0)

    def _close(self, entry_id: int, status: str, epsilon: float, events: str | None = None) -> None:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            updated = conn.execute(
                "UPDATE entries SET status = ?, spent_epsilon = ?, events = ?, updated_at = ? WHERE id = ? AND status = 'reserved'",
                (status, epsilon, events, time.time(), entry_id),
            ).rowcount
            conn.execute("COMMIT")
        if updated != 1:
            raise LookalikeError(f"ledger '{self.path}': entry {entry_id} is not an open reservation")

    def entry(self, entry_id: int) -> dict:
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise LookalikeError(f"ledger '{self.path}': no entry {entry_id}")
        return dict(row)

    def remaining(self, fingerprint: str, default_budget: float) -> float:
        """Epsilon still available on ``fingerprint`` (the default budget if the ledger is new)."""
        if not self.path.exists():
            return default_budget
        with self._connect() as conn:
            row = conn.execute("SELECT budget_epsilon FROM budgets WHERE fingerprint = ?", (fingerprint,)).fetchone()
            entries = self._rows(conn, fingerprint)
        return max((row[0] if row else default_budget) - charge(entries, gaussian_block(entries)).charged_epsilon, 0.0)

    def entries(self, fingerprint: str) -> list[dict]:
        with self._connect(create=False) as conn:
            return self._rows(conn, fingerprint)

    @staticmethod
    def _rows(conn: sqlite3.Connection, fingerprint: str) -> list[dict]:
        cursor = conn.execute("SELECT * FROM entries WHERE fingerprint = ? ORDER BY id", (fingerprint,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def set_budget(self, fingerprint: str, budget_epsilon: float, budget_delta: float | None = None) -> None:
        """Change a fingerprint's total budget: a deliberate act by the data owners."""
        with self._connect(create=False) as conn:
            conn.execute("BEGIN IMMEDIATE")
            updated = conn.execute("UPDATE budgets SET budget_epsilon = ?, budget_delta = ? WHERE fingerprint LIKE ?",
                                   (budget_epsilon, budget_delta, fingerprint + "%")).rowcount
            conn.execute("COMMIT" if updated == 1 else "ROLLBACK")
        if updated != 1:
            raise LookalikeError(f"ledger '{self.path}': fingerprint '{fingerprint}' matches {updated} datasets; give more of it")

    def status(self) -> list[BudgetStatus]:
        with self._connect(create=False) as conn:
            budgets = conn.execute("SELECT fingerprint, budget_epsilon, budget_delta FROM budgets ORDER BY created_at").fetchall()
            entries = {fp: self._rows(conn, fp) for fp, _, _ in budgets}
        result = []
        for fp, budget_epsilon, budget_delta in budgets:
            rows = entries[fp]
            cost = charge(rows, gaussian_block(rows))
            result.append(BudgetStatus(
                fp, budget_epsilon, budget_delta,
                sum(r["spent_epsilon"] for r in rows if r["status"] == "spent"),
                sum(r["reserved_epsilon"] for r in rows if r["status"] == "reserved"),
                cost.delta, len(rows), cost.charged_epsilon, cost.reason))
        return result
