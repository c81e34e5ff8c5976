"""Utility on held-out seed users: AUC, recall and lift at the top k% of the population.

These numbers are computed from seed labels, so they are exact only in trusted-evaluation mode
(PRIVACY.md, item 4). Without it, training logs no seed-derived metric.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lookalike.data.encode import EncodedFeatures


@torch.no_grad()
def score(model: nn.Module, features: EncodedFeatures, device: torch.device, batch_size: int = 65536) -> np.ndarray:
    """Logits [n, n_audiences] for every row of ``features`` (rankings are the same as for
    probabilities; the DP histograms bin logits)."""
    model.eval()
    out = []
    tensors = features.tensors()
    for start in range(0, len(features), batch_size):
        batch = [t[start : start + batch_size].to(device) for t in tensors]
        out.append(model(*batch).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.arange(1, scores.size + 1)
    # Average ranks over ties so equal scores are not ordered arbitrarily.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


def recall_at(positive: np.ndarray, negative: np.ndarray, fraction: float) -> float:
    """Share of held-out seed users scoring above the top-``fraction`` cut of non-seed users."""
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    threshold = np.quantile(negative, 1.0 - fraction)
    return float((positive > threshold).mean())


def holdout_metrics(positive: np.ndarray, negative: np.ndarray, top_fraction: float) -> dict[str, float]:
    recall = recall_at(positive, negative, top_fraction)
    pct = int(round(top_fraction * 100))
    # A random ranking puts `fraction` of the seed in the top `fraction`: lift 1.
    return {"auc": auc(positive, negative), f"recall_at_{pct}pct": recall, f"lift_at_{pct}pct": recall / top_fraction}
