"""Private hyperparameter tuning: the privacy of training a random number of trials and releasing
only the best one (Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential Privacy",
ICLR 2022, Theorem 2).

If each trial (random hyperparameters, DP-SGD, a DP release of its score) is
epsilon(lambda)-RDP at every order lambda, and the number of trials K is drawn from a truncated
negative binomial distribution with shape eta >= 0 and mean mu, independently of the data and
kept secret, then releasing the best trial alone is RDP with

    epsilon'(lambda) = epsilon(lambda) + (1 + eta) min_lh [(1 - 1/lh) epsilon(lh) + log(1/gamma) / lh]
                       + log(mu) / (lambda - 1),

gamma being the distribution's halting probability. Every trial is a composition of Gaussian
steps, so epsilon(lambda) is the sum of their RDP curves. Shape 0 (the logarithmic distribution)
costs least: (1 + eta) weighs the second term. K must never leave the room: the bound is for the
best trial's output alone, and the best of a known number k of trials costs about k trials.
"""

from __future__ import annotations

import math

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

# Opacus' orders, extended upwards: the minimum over lh favours high orders when K's mean is large.
ORDERS = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256], dtype=np.float64)


def trials_mean(gamma: float, shape: float) -> float:
    """E[K] of the truncated negative binomial with halting probability ``gamma``."""
    if shape == 0:  # logarithmic
        return (1.0 / gamma - 1.0) / math.log(1.0 / gamma)
    return shape * (1.0 - gamma) / (gamma * (1.0 - gamma**shape))


def halting_probability(mean: float, shape: float) -> float:
    """The gamma whose distribution has E[K] = ``mean`` (>= 1): the mean falls as gamma grows.
    The bisection returns the lower end, whose mean is at least ``mean``: log(mu) in the bound
    is then no smaller than the mean the trials are drawn with."""
    if mean == 1:
        return 1.0
    low, high = 1e-12, 1.0 - 1e-12
    for _ in range(200):
        mid = (low + high) / 2
        if trials_mean(mid, shape) > mean:
            low = mid
        else:
            high = mid
    return low


def draw_trials(mean: float, shape: float, rng: np.random.Generator) -> int:
    """K >= 1 from the truncated negative binomial (``rng`` from OS entropy: K is secret)."""
    gamma = halting_probability(mean, shape)
    if gamma >= 1.0:
        return 1
    while True:
        # P[K = k] is proportional to (1 - gamma)^k binom(k + eta - 1, k), k >= 1.
        k = int(rng.logseries(1.0 - gamma)) if shape == 0 else int(rng.negative_binomial(shape, gamma))
        if k >= 1:
            return k


def trial_rdp(events: list[tuple[float, float, int]]) -> np.ndarray:
    """One trial's RDP curve over ``ORDERS``: its Gaussian steps (noise multiplier, rate, count)."""
    curve = np.zeros_like(ORDERS)
    for sigma, rate, steps in events:
        curve += compute_rdp(q=rate, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    return curve


def selection_rdp(curve: np.ndarray, mean: float, shape: float) -> np.ndarray:
    """The best-of-K release's RDP curve (Theorem 2), made monotone in the order."""
    if mean == 1:
        return curve.copy()
    gamma = halting_probability(mean, shape)
    constant = (1.0 + shape) * np.min((1.0 - 1.0 / ORDERS) * curve + math.log(1.0 / gamma) / ORDERS)
    bound = curve + math.log(mean) / (ORDERS - 1.0) + constant
    # RDP grows with the order, so a higher order's bound also holds at a lower one.
    return np.minimum.accumulate(bound[::-1])[::-1]


def selection_epsilon(events: list[tuple[float, float, int]], delta: float, mean: float, shape: float) -> float:
    """(epsilon, delta) of releasing the best of K trials, each made of ``events``."""
    epsilon, _ = get_privacy_spent(orders=ORDERS, rdp=selection_rdp(trial_rdp(events), mean, shape), delta=delta)
    return float(epsilon)
