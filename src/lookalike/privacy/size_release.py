"""A DP estimate of the training-set size N, released once per run with the Gaussian mechanism.

N counts the background users and the matched seed users who train, so it is seed-derived: one
user joining or leaving the seed moves it by one (L2 sensitivity 1). DP-SGD needs a size for its
sample rate q = batch / N and for averaging the noisy sum, and both end up in the model and the
logs; using N itself would release it exactly. The estimate is charged with the run (its own
(epsilon, delta), composed with training as one more Gaussian step of rate 1).

Poisson sampling at any fixed rate is accounted the same way, so an estimate that is off only
makes the real batch a little larger or smaller than ``trainer.batch_size``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from lookalike.privacy.mechanisms import gaussian_sigma


@dataclass(frozen=True)
class SizeEstimate:
    value: int  # the released estimate, at least 1
    noise_multiplier: float  # noise std / sensitivity (1): the Gaussian step the ledger composes


def release_size(n: int, epsilon: float, delta: float) -> SizeEstimate:
    """N plus Gaussian noise calibrated to (epsilon, delta) for sensitivity 1, drawn from OS
    entropy (never from the run's logged seed, which would let anyone subtract it)."""
    sigma = gaussian_sigma(epsilon, delta, 1.0)
    noisy = n + np.random.default_rng(secrets.randbits(128)).normal(0.0, sigma)
    return SizeEstimate(max(1, int(round(noisy))), sigma)
