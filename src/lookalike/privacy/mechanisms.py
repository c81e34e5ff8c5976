"""DP mechanisms: the Gaussian mechanism on seed-derived counts, randomised response for seed
exclusion, and the OS-entropy generator that every noise draw (DP-SGD, centroid, releases) uses.
None draws from a config seed: noise an attacker can replay protects nothing."""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch

from lookalike.errors import ConfigError


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The exact delta of the Gaussian mechanism (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    tail = _phi(-a - b)
    # e^eps * tail in log space: e^eps alone overflows for large epsilon while the product is tiny.
    return _phi(a - b) - (math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0)


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise std (to 0.1%) giving (epsilon, delta)-DP for the given L2 sensitivity:
    the analytic calibration, tighter than the classical sqrt(2 ln(1.25/delta)) / epsilon."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ConfigError("export.report_epsilon", f"({epsilon}, {delta}) must have epsilon > 0 and 0 < delta < 1")
    low, high = 1e-6 * sensitivity, sensitivity
    while gaussian_delta(high, epsilon, sensitivity) > delta:
        low, high = high, high * 2.0
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2.0
        if gaussian_delta(mid, epsilon, sensitivity) > delta:
            low = mid
        else:
            high = mid
    return high


def add_gaussian_noise(values: np.ndarray, sigma: float) -> np.ndarray:
    return values + np.random.default_rng().normal(0.0, sigma, size=values.shape)


def randomized_exclusion(is_seed: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Randomised response on seed membership: True means "leave this user out".

    A seed user is left out with probability e^eps / (1 + e^eps), anyone else with
    1 / (1 + e^eps); the odds ratio is e^eps, so each user's exclusion is eps-DP in their
    membership.
    """
    keep_truth = math.exp(epsilon) / (1.0 + math.exp(epsilon))
    flip = rng.random(is_seed.shape[0]) >= keep_truth
    return np.where(flip, ~is_seed, is_seed)


def entropy_generator(device: torch.device) -> torch.Generator:
    """A generator seeded from OS entropy. DP-SGD's noise and its Poisson sample must not be
    reproducible from the run's logged ``seed`` (Opacus' default draws both from the global RNG,
    which ``seed`` fixes: whoever knows the seed could recompute the noise and subtract it).
    Every rank gets its own, which also keeps the ranks' samples independent."""
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator
