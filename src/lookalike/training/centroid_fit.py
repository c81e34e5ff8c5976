"""Fit the centroid baseline: one Gaussian-mechanism release of the seed users' summed vectors,
accounted like one full-batch DP step so the epsilon is reported the same way as DP-SGD's."""

from __future__ import annotations

import logging
from typing import Any

import torch

from lookalike.model.centroid import CentroidSimilarity
from lookalike.privacy.accounting import calibrate_noise, epsilon_from_history
from lookalike.training.loop import TrainResult

log = logging.getLogger(__name__)


def gaussian_release(result: TrainResult, cfg: Any, delta: float) -> float:
    """Record in ``result`` one Gaussian-mechanism release calibrated so the accountant reports
    ``privacy.target_epsilon`` at ``delta``, and return its noise multiplier (noise std over
    sensitivity). A Gaussian mechanism is a subsampled Gaussian with q = 1 and one step."""
    accountant = str(cfg.privacy.accountant)
    z = calibrate_noise(float(cfg.privacy.target_epsilon), delta, 1.0, 1, accountant)
    result.noise_multiplier, result.sample_rate, result.steps = z, 1.0, 1
    result.history = [(z, 1.0, 1)]
    result.epsilon = epsilon_from_history(result.history, delta, accountant)
    return z


def fit_centroid(model: CentroidSimilarity, tensors: list[torch.Tensor], cfg: Any, delta: float) -> TrainResult:
    *inputs, labels = tensors
    numeric, categorical, *multi = inputs
    result = TrainResult(model, steps=0, epochs=0)
    sigma = 0.0
    if cfg.privacy.enabled:
        z = gaussian_release(result, cfg, delta)
        sigma = z * model.sensitivity()
        log.info("centroid: Gaussian noise std %.3f (multiplier %.3f x sensitivity %.3f), epsilon %.4f", sigma, z, model.sensitivity(), result.epsilon)
    model.fit(numeric, categorical, multi, labels, sigma)
    return result
