"""DP estimates of the training-set size N and of each audience's matched seed users, released
together once per run with the Gaussian mechanism, before anything else reads the seed.

N counts the background users and the matched seed users who train; each audience's count is
its matched seed users. All are seed-derived: one user joining or leaving the seed (of one or of
every audience) moves N by one and each audience's count by at most one, so the vector's L2
sensitivity is sqrt(1 + A) for A audiences. DP-SGD needs a size for its sample rate q = batch / N
and for averaging the noisy sum; the owners' minimum seed size is decided on the audiences'
counts. Using the exact numbers would release them (a refusal at a chosen minimum is a
membership oracle). The release is charged with the run, and stays charged when the run stops
after it, whatever the reason: one Gaussian step of rate 1 that the ledger composes.

Poisson sampling at any fixed rate is accounted the same way, so an estimate that is off only
makes the real batch a little larger or smaller than ``trainer.batch_size``.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import numpy as np

from lookalike.privacy.mechanisms import gaussian_sigma


@dataclass(frozen=True)
class SizeEstimate:
    value: int  # the released estimate of N, at least 1
    noise_multiplier: float  # noise std / L2 sensitivity: the Gaussian step the ledger composes
    matched: dict[str, int] = field(default_factory=dict)  # audience -> released estimate of its matched seed users


def release_size(n: int, epsilon: float, delta: float, matched: dict[str, int] | None = None) -> SizeEstimate:
    """N and the audiences' ``matched`` counts plus Gaussian noise calibrated to (epsilon, delta)
    for their joint sensitivity, drawn from OS entropy (never from the run's logged seed, which
    would let anyone subtract it)."""
    matched = dict(matched or {})
    sensitivity = math.sqrt(1 + len(matched))
    sigma = gaussian_sigma(epsilon, delta, sensitivity)
    noisy = np.array([n, *matched.values()], dtype=np.float64) + np.random.default_rng(secrets.randbits(128)).normal(0.0, sigma, size=1 + len(matched))
    counts = {name: int(round(value)) for name, value in zip(matched, noisy[1:])}
    return SizeEstimate(max(1, int(round(noisy[0]))), sigma / sensitivity, counts)
