"""Charging a dataset's runs by their privacy curves instead of summing their epsilons.

Every DP-SGD step, every Gaussian release of evaluation counts and every Gaussian export report
is a (sub)sampled Gaussian mechanism, recorded in the ledger as (noise multiplier, sample rate,
steps) when its run finishes. Composing all finished Gaussian entries (RDP, and PRV while
there are few distinct mechanisms) gives an epsilon at their summed delta that is never above
the sum of their epsilons, and usually well below. Everything else (an open reservation, a crashed run, randomised response) is added to it
at face value: basic composition of the composed block with the rest is always valid, so one
non-Gaussian entry no longer throws away what composition saves on the others.

The ledger enforces this charge. The composed block is computed outside the ledger's write
lock on a snapshot of finished entries; a finished entry never changes again, so any entry
that finishes meanwhile is simply counted at face value inside the lock.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
PRV_MAX_MECHANISMS = 8
# Below this noise multiplier a mechanism protects next to nothing and the curves' numerics blow
# up (PRV's grid grows as 1 / sigma: gigabytes at 1e-4): such an entry is charged at face value,
# which is always valid.
MIN_NOISE_MULTIPLIER = 0.3


@dataclass(frozen=True)
class GaussianBlock:
    """The finished Gaussian entries composed together."""

    ids: frozenset[int]
    epsilon: float  # at ``delta``; 0.0 for an empty block
    delta: float
    summed: float  # the same entries' epsilons summed, for comparison


NO_BLOCK = GaussianBlock(frozenset(), 0.0, 0.0, 0.0)  # nothing composed: every entry at face value


@dataclass(frozen=True)
class Composition:
    summed_epsilon: float  # every entry at face value: what a plain ledger would charge
    charged_epsilon: float  # the composed block plus everything else at face value: what is enforced
    composed_entries: int
    summed_entries: int
    delta: float
    reason: str

    @property
    def composed_epsilon(self) -> float | None:
        """The enforced charge when composition did something, else None."""
        return self.charged_epsilon if self.composed_entries else None


def face_value(entry: dict) -> float:
    if entry["status"] == "reserved":
        return float(entry["reserved_epsilon"])
    return float(entry["spent_epsilon"] or 0.0) if entry["status"] == "spent" else 0.0


def is_gaussian(entry: dict) -> bool:
    if entry["status"] != "spent" or entry.get("events") in (None, "", "[]"):
        return False
    return all(float(sigma) >= MIN_NOISE_MULTIPLIER for sigma, _, _ in json.loads(entry["events"]))


def gaussian_block(entries: list[dict]) -> GaussianBlock:
    """Compose the finished Gaussian entries (one run's training and evaluation compose too)."""
    chosen = [e for e in entries if is_gaussian(e)]
    summed, delta = sum(face_value(e) for e in chosen), sum(float(e["delta"]) for e in chosen)
    if not chosen:
        return NO_BLOCK
    history = merge_steps(tuple(step) for e in chosen for step in json.loads(e["events"]))
    try:
        composed = curve_epsilon(history, delta)
    except (ValueError, ArithmeticError, RuntimeError) as exc:  # numerics out of range: summing is always valid
        log.warning("composition failed (%s); the ledger sums these entries instead", exc)
        return NO_BLOCK
    if not np.isfinite(composed):
        return NO_BLOCK
    # Composition can never be worse than summing; take the smaller if numerics disagree.
    return GaussianBlock(frozenset(int(e["id"]) for e in chosen), min(composed, summed), delta, summed)


def merge_steps(steps) -> list[tuple[float, float, int]]:
    """Runs with the same (noise multiplier, sample rate) become one mechanism with their steps
    added: the same composition, and far fewer distinct mechanisms for PRV to discretise."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, n in steps:
        merged[(float(sigma), float(q))] = merged.get((float(sigma), float(q)), 0) + int(n)
    return [(sigma, q, n) for (sigma, q), n in merged.items()]


def curve_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """RDP always (orders add up: milliseconds for any number of runs); PRV as well, which is
    tighter, while there are few distinct mechanisms (its cost grows with each: ~30 s at 40)."""
    from lookalike.privacy.accounting import epsilon_from_history

    epsilon = epsilon_from_history(history, delta, "rdp")
    if len(history) <= PRV_MAX_MECHANISMS:
        epsilon = min(epsilon, epsilon_from_history(history, delta, "prv"))
    return epsilon


def charge(entries: list[dict], block: GaussianBlock) -> Composition:
    """What ``entries`` cost with ``block`` composed and every other entry at face value."""
    live = [e for e in entries if e["status"] != "released"]
    rest = [e for e in live if int(e["id"]) not in block.ids]
    summed = sum(face_value(e) for e in live)
    charged = block.epsilon + sum(face_value(e) for e in rest)
    delta = sum(float(e["delta"]) for e in live)
    if block.ids:
        reason = f"composition of {len(block.ids)} finished Gaussian entries ({block.summed:.4g} summed -> {block.epsilon:.4g})"
        reason += f", {len(rest)} other entries summed" if rest else ""
    else:
        reason = "summed: no finished entry with a Gaussian record"
    return Composition(summed, min(charged, summed), len(block.ids), len(rest), delta, reason)


def compose(ledger, fingerprint: str) -> Composition:
    """The charge of every entry on ``fingerprint`` in ``ledger``."""
    entries = ledger.entries(fingerprint)
    return charge(entries, gaussian_block(entries))
