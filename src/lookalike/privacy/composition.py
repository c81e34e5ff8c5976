"""Composing the runs on one dataset by their privacy curves instead of summing epsilons.

Every DP-SGD step, every Gaussian release of evaluation counts and every Gaussian export report
is a (sub)sampled Gaussian mechanism, recorded in the ledger as (noise multiplier, sample rate,
steps). When all the entries on a fingerprint are of that kind, one PRV accountant over all of
them gives an epsilon at the summed delta that is never above the sum of the runs' epsilons
(and usually well below). Any other entry (randomised response, a crash with no record) makes
the composition fall back to the sum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lookalike.privacy.dp import epsilon_from_history
from lookalike.privacy.ledger import Ledger


@dataclass(frozen=True)
class Composition:
    summed_epsilon: float
    composed_epsilon: float | None  # None: some entry is not a Gaussian mechanism
    delta: float
    reason: str


def compose(ledger: Ledger, fingerprint: str, accountant: str = "prv") -> Composition:
    entries = [e for e in ledger.entries(fingerprint) if e["status"] != "released"]
    summed = sum(e["reserved_epsilon"] if e["status"] == "reserved" else e["spent_epsilon"] for e in entries)
    delta = sum(e["delta"] for e in entries)
    history, blockers = [], []
    for e in entries:
        if e["status"] != "spent" or e.get("events") is None:
            blockers.append(f"entry {e['id']} ({e['kind']}, {e['status']}) has no Gaussian record")
            continue
        history += [tuple(step) for step in json.loads(e["events"])]
    if blockers or not history:
        return Composition(summed, None, delta, "summed: " + ("; ".join(blockers) if blockers else "no entries"))
    composed = epsilon_from_history(history, delta, accountant)
    # Composition can never be worse than summing; take the smaller if numerics disagree.
    return Composition(summed, min(composed, summed), delta, f"{accountant} composition of {len(history)} Gaussian mechanisms")
