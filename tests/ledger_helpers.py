"""Ledger-level test helpers with light imports: the racing-process tests spawn 8 children that
each import this (and not conftest, which pulls in torch and mlflow)."""

from __future__ import annotations

import hashlib

import numpy as np

from lookalike.privacy.budgets import create_budget
from lookalike.privacy.fingerprint import UsersKey
from lookalike.privacy.rules import Rules


def reserve_on(
    ledger, fingerprint: str, epsilon: float, delta: float, *, budget: float, budget_delta: float | None = None, kind: str = "train", description: str = "test"
) -> int:
    """Reserve on budget ``fingerprint``, which the owners open first (at ``budget``) if the
    ledger has none: the ledger-level tests' stand-in for ``lookalike-budget create``."""
    open_budget(ledger, fingerprint, budget, budget_delta)
    return ledger.reserve(fingerprint, epsilon, delta, kind=kind, description=description)


def open_budget(ledger, fingerprint: str, budget: float, budget_delta: float | None = None) -> None:
    """A budget ``fingerprint`` for one made-up user (so no two test budgets share users),
    unless the ledger has it already."""
    if not ledger.exists() or fingerprint not in {s.fingerprint for s in ledger.status()}:
        user = np.frombuffer(hashlib.sha256(fingerprint.encode()).digest()[:8], dtype="<u8")
        create_budget(ledger, UsersKey(fingerprint, 1, user), budget, budget_delta, Rules())
