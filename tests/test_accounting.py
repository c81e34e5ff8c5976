"""Noise calibration and the delta policy: the reported epsilon never exceeds the target."""

from __future__ import annotations

import pytest

from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.dp import calibrate_noise, epsilon_from_history, resolve_delta


@pytest.mark.parametrize(("accountant", "target", "q", "steps"), [("prv", 3.0, 1 / 93, 460), ("rdp", 1.0, 0.02, 250), ("prv", 8.0, 0.1, 30)])
def test_calibrated_noise_meets_the_target_tightly(accountant, target, q, steps):
    sigma = calibrate_noise(target, 2e-6, q, steps, accountant)
    reached = epsilon_from_history([(sigma, q, steps)], 2e-6, accountant)
    assert target * (1 - 0.0051) <= reached <= target
    # a little less noise would overshoot: the calibration is not wastefully loose
    assert epsilon_from_history([(sigma * 0.97, q, steps)], 2e-6, accountant) > reached


def test_unreachable_target_names_the_key():
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        calibrate_noise(1e-6, 1e-5, 0.5, 10_000, "rdp")


def test_delta_policy():
    assert resolve_delta(None, 1000) == pytest.approx(1e-4)
    assert resolve_delta(5e-4, 1000) == 5e-4
    for bad in (1e-3, 0.5, 0.0):
        with pytest.raises(LookalikeError, match="privacy.target_delta"):
            resolve_delta(bad, 1000)
