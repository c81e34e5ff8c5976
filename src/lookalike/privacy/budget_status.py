"""What ``lookalike-budget status`` shows of each budget: its entries read in one transaction,
then what is charged, spent, reserved and left, computed after that transaction has closed (a
PRV composition can be slow, and an open read transaction can hold up writers: SQLite's
rollback journal keeps its shared lock until the transaction ends)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import Connection, select

from lookalike.privacy.composition import charge, gaussian_block
from lookalike.privacy.ledger_store import BUDGETS, ENTRIES
from lookalike.privacy.rules import Rules


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
    rules: dict = field(default_factory=dict)  # the data owners' clean-room rules

    @property
    def remaining_epsilon(self) -> float:
        return max(self.budget_epsilon - self.charged_epsilon, 0.0)

    def to_dict(self) -> dict:
        return asdict(self) | {"remaining_epsilon": self.remaining_epsilon}


def entry_rows(conn: Connection, fingerprint: str) -> list[dict]:
    """Every entry of the budget ``fingerprint``, oldest first."""
    query = select(ENTRIES).where(ENTRIES.c.fingerprint == fingerprint).order_by(ENTRIES.c.id)
    return [dict(r) for r in conn.execute(query).mappings()]


def read_budgets(conn: Connection) -> tuple[list, dict[str, list[dict]]]:
    """Every budget (oldest first) and its entries, as one transaction sees them."""
    budgets = conn.execute(
        select(BUDGETS.c.fingerprint, BUDGETS.c.budget_epsilon, BUDGETS.c.budget_delta, BUDGETS.c.rules).order_by(BUDGETS.c.created_at)
    ).all()
    return list(budgets), {b[0]: entry_rows(conn, b[0]) for b in budgets}


def budget_statuses(budgets: list, entries: dict[str, list[dict]]) -> list[BudgetStatus]:
    """What :func:`read_budgets` read, summed and composed budget by budget."""
    result = []
    for fp, budget_epsilon, budget_delta, rules in budgets:
        rows = entries[fp]
        cost = charge(rows, gaussian_block(rows))
        result.append(
            BudgetStatus(
                fp,
                budget_epsilon,
                budget_delta,
                sum(r["spent_epsilon"] for r in rows if r["status"] == "spent"),
                sum(r["reserved_epsilon"] for r in rows if r["status"] == "reserved"),
                cost.delta,
                len(rows),
                cost.charged_epsilon,
                cost.reason,
                asdict(Rules.from_json(rules)),
            )
        )
    return result
