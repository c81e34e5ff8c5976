"""The score private tuning ranks its trials by: how many held-out seed users a trial's model
puts in the top ``evaluation.top_fraction`` of a reference population, released with Gaussian
noise.

One count per audience, of the held-out seed users scoring above a threshold. The threshold is
the top-fraction quantile of the model's scores over the reference population: every publisher
user whose keyed draw falls in the evaluation range, seed or not (data/matching.py). That
population depends on the ids and the split seed only, so the threshold is a function of the
trial's model (itself DP) and public features. A user joining or leaving the seed then moves
each audience's count by at most one: L2 sensitivity sqrt(audiences).

A count is a two-bucket histogram: its noise is one draw where the held-out AUC's release sums
the noise of some sixty buckets, which is what makes it the score for choosing between trials
from a few hundred held-out users. The score is the noisy counts summed over audiences (held-out
seed users reached).
"""

from __future__ import annotations

import math

import numpy as np

from lookalike.model.scoring import score
from lookalike.privacy.mechanisms import add_gaussian_noise


def thresholds(model, data, device, top_fraction: float) -> np.ndarray:
    """Per audience, the score above which the top ``top_fraction`` of the reference population lies."""
    reference = score(model, data.reference_features, device)
    return np.quantile(reference, 1.0 - top_fraction, axis=0) if len(reference) else np.full(len(data.training.audiences), np.inf)


def reached(model, data, device, top_fraction: float) -> np.ndarray:
    """Exact counts per audience of held-out seed users above the reference threshold: seed-derived."""
    cut = thresholds(model, data, device, top_fraction)
    counts = []
    for i, audience in enumerate(data.training.audiences):
        held = data.holdout_features[audience]
        counts.append(float((score(model, held, device)[:, i] > cut[i]).sum()) if len(held) else 0.0)
    return np.array(counts)


def noisy_total(counts: np.ndarray, noise_multiplier: float) -> float:
    """The counts, each with Gaussian noise of std multiplier x sqrt(audiences), summed."""
    return float(add_gaussian_noise(counts, noise_multiplier * math.sqrt(counts.size)).sum())


def reach_score(model, data, device, top_fraction: float, noise_multiplier: float) -> float:
    """The noisy count of held-out seed users reached, summed over audiences."""
    return noisy_total(reached(model, data, device, top_fraction), noise_multiplier)
