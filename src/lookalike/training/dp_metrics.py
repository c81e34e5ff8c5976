"""Held-out utility released with differential privacy: AUC, recall@k, lift@k and the
reach-vs-recall curve, all computed from Gaussian-noised score histograms.

Held-out seed users (positives) and evaluation negatives are binned on fixed, data-independent
edges of the model's logit. Changing one user's seed membership moves at most one count in the
positive histogram and one in the negative histogram of each audience, so the L2 sensitivity of
all histograms together is sqrt(2 * audiences). Every metric is post-processing of the noisy
histograms, so one release pays for all of them.
"""

from __future__ import annotations

import numpy as np

from lookalike.privacy.mechanisms import add_gaussian_noise, gaussian_sigma

# Logit buckets 0.4 wide; the two ends catch the tails. Few, wide buckets keep the noise that
# cumulative sums add small (variance grows with the number of buckets summed).
EDGES = np.linspace(-12.0, 12.0, 61)
REACH = np.round(np.linspace(0.01, 1.0, 100), 4)


def histogram(logits: np.ndarray) -> np.ndarray:
    """Counts per bucket, lowest scores first (len(EDGES) + 1 buckets)."""
    return np.bincount(np.searchsorted(EDGES, logits, side="right"), minlength=EDGES.size + 1).astype(np.float64)


def noisy_histograms(pos: list[np.ndarray], neg: list[np.ndarray], epsilon: float, delta: float) -> tuple[list, list, float]:
    """Release every audience's positive and negative histogram at once; returns the noise std."""
    sigma = gaussian_sigma(epsilon, delta, (2.0 * len(pos)) ** 0.5)
    # Not clipped per bucket: clipping would bias every empty bucket upwards; the metrics
    # clip their own results instead.
    noisy = [add_gaussian_noise(histogram(x), sigma) for x in pos + neg]
    return noisy[: len(pos)], noisy[len(pos) :], sigma


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(positive outscores negative), ties within a bucket counted half."""
    p, n = pos.sum(), neg.sum()
    if p <= 0 or n <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(np.clip((pos * (below + 0.5 * neg)).sum() / (p * n), 0.0, 1.0))


def recall_curve(pos: np.ndarray, neg: np.ndarray, reach: np.ndarray = REACH) -> np.ndarray:
    """Recall of positives when targeting the top ``reach`` share of negatives, interpolating
    linearly inside the bucket where the cut falls."""
    p, n = pos.sum(), neg.sum()
    if p <= 0 or n <= 0:
        return np.full(reach.shape, np.nan)
    # Negatives above each bucket boundary, top down; made non-decreasing since noisy counts
    # can be negative.
    neg_top = np.maximum.accumulate(np.concatenate([[0.0], np.cumsum(neg[::-1])]))
    pos_top = np.maximum.accumulate(np.concatenate([[0.0], np.cumsum(pos[::-1])]))
    return np.clip(np.interp(reach * n, neg_top, pos_top) / p, 0.0, 1.0)


def histogram_metrics(pos: np.ndarray, neg: np.ndarray, top_fraction: float) -> dict[str, float]:
    pct = int(round(top_fraction * 100))
    recall = float(recall_curve(pos, neg, np.array([top_fraction]))[0])
    return {"auc": auc_from_histograms(pos, neg), f"recall_at_{pct}pct": recall, f"lift_at_{pct}pct": recall / top_fraction}
