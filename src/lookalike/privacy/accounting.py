"""Accounting: the delta policy, noise calibration for a target epsilon, epsilon recomputed from a
run's (noise multiplier, sample rate, steps) history, and the privacy settings' checks."""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable

import numpy as np

from lookalike.errors import ConfigError
from lookalike.privacy.accountants import create_accountant

log = logging.getLogger(__name__)
ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("fused", "hooks", "functorch")


def resolve_delta(target_delta: float | None, publisher_rows: int) -> float:
    """delta defaults to 1/(10 R) for the R publisher users in the window; delta >= 1/R is
    refused. R is a public count of the publisher's own table and at least the number N of
    training examples, so 1/(10 R) <= 1/(10 N) without releasing N (which is seed-derived)."""
    if target_delta is None:
        return 1.0 / (10.0 * publisher_rows)
    delta = float(target_delta)
    if not (math.isfinite(delta) and 0 < delta < 1.0 / publisher_rows):
        raise ConfigError(
            "privacy.target_delta",
            f"{delta:g} must be in (0, 1/R) = (0, {1.0 / publisher_rows:.3g}) for the R = {publisher_rows} "
            "publisher users in the window; leave it null for 1/(10 R)",
        )
    if delta > 1.0 / (10.0 * publisher_rows):
        log.warning("privacy.target_delta %.3g is above 1/(10 R) = %.3g", delta, 1.0 / (10.0 * publisher_rows))
    return delta


def release_delta(value: float | None, default: float, rows: int) -> float:
    """A single release's delta (size counts, evaluation, report): as set, or ``default`` but
    at most 1/(100 R) for R public rows, a tenth of the default cap on one release."""
    return float(value) if value is not None else min(default, 1.0 / (100.0 * max(rows, 1)))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, rel_tolerance: float = 0.005) -> float:
    """Smallest noise multiplier (within ``rel_tolerance`` of epsilon) whose reported epsilon
    for exactly ``steps`` steps at ``sample_rate`` is <= ``target_epsilon``."""
    sigma = smallest_noise(lambda s: epsilon_from_history([(s, sample_rate, steps)], delta, accountant), target_epsilon, rel_tolerance)
    if sigma is None:
        raise ConfigError("privacy.target_epsilon", f"{target_epsilon} is unreachable for {steps} steps at sample rate {sample_rate:.3g}")
    return sigma


def smallest_noise(spent: Callable[[float], float], budget: float, rel_tolerance: float = 0.005) -> float | None:
    """The smallest noise multiplier whose ``spent`` (falling as the noise grows) is <= ``budget``,
    to within ``rel_tolerance`` of the budget; None when a multiplier of 1e4 is not enough."""
    epsilon = functools.lru_cache(maxsize=None)(spent)
    low, high = 0.0, 1.0
    while epsilon(high) > budget:
        low, high = high, high * 2
        if high > 1e4:
            return None
    for _ in range(40):
        mid = (low + high) / 2
        if epsilon(mid) > budget:
            low = mid
        else:
            high = mid
        if budget - epsilon(high) <= rel_tolerance * budget:
            break
    return high


def epsilon_from_history(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Recompute epsilon from (noise multiplier, sample rate, steps) alone, with a fresh accountant."""
    fresh = create_accountant(accountant)
    fresh.history = list(history)
    # q = 1 (a plain Gaussian mechanism) makes Opacus' PRV code take log(0) on a branch it discards.
    with np.errstate(divide="ignore"):
        return float(fresh.get_epsilon(delta=delta))


def validate_privacy_config(privacy: Any) -> None:
    if not privacy.enabled:
        return
    for key, upper in (("target_epsilon", math.inf), ("max_grad_norm", math.inf), ("size_epsilon", math.inf), ("size_delta", 1.0)):
        value = privacy.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 < value < upper):
            bound = "a positive, finite number" if upper == math.inf else f"a number in (0, {upper:g})"
            raise ConfigError(f"privacy.{key}", f"'{value}' must be {bound}")
    if privacy.accountant not in ACCOUNTANTS:
        raise ConfigError("privacy.accountant", f"'{privacy.accountant}' is not one of {', '.join(ACCOUNTANTS)}")
    if privacy.secure_mode:
        import importlib.util

        # Opacus' secure_mode draws noise from torchcsprng, whose last release (0.2.1, 2021)
        # has no build for current torch: refuse up front rather than fail mid-run.
        if importlib.util.find_spec("torchcsprng") is None:
            raise ConfigError(
                "privacy.secure_mode",
                "true needs the torchcsprng package (Opacus' secure RNG), which is not installed "
                "and has no build for this torch; set privacy.secure_mode=false",
            )
    if privacy.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError("privacy.grad_sample_mode", f"'{privacy.grad_sample_mode}' is not supported; use one of {', '.join(GRAD_SAMPLE_MODES)}")


@functools.lru_cache(maxsize=64)  # the batch rule asks again for the same plan (tuning, the epoch rule)
def sample_rate_for_noise(noise_multiplier: float, epsilon: float, delta: float, epochs: int, accountant: str) -> float:
    """The sampling rate q at which ``epochs`` passes over the data (ceil(epochs / q) steps) at
    ``noise_multiplier`` spend ``epsilon``: the largest q (to 1%) the budget allows at that noise.
    Spending grows with q at a fixed number of passes (about as sqrt(epochs q) for small q)."""

    def spent(q: float) -> float:
        return epsilon_from_history([(noise_multiplier, q, math.ceil(epochs / q))], delta, accountant)

    low, high = 1e-7, 1.0
    if spent(high) <= epsilon:
        return high
    while high / low > 1.01:
        mid = math.sqrt(low * high)
        if spent(mid) <= epsilon:
            low = mid
        else:
            high = mid
    return low
