"""DP utility metrics from histograms agree with exact ones, and the noise is what it claims."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.model.scoring import holdout_metrics
from lookalike.training.dp_metrics import auc_from_histograms, histogram, histogram_metrics, noisy_histograms, recall_curve


def scores(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.5, 1.0, 3000), rng.normal(-1.0, 1.2, 20000)


def test_histogram_metrics_match_exact_metrics_without_noise():
    pos, neg = scores()
    exact = holdout_metrics(pos, neg, 0.2)
    binned = histogram_metrics(histogram(pos), histogram(neg), 0.2)
    assert binned["auc"] == pytest.approx(exact["auc"], abs=2e-3)
    assert binned["recall_at_20pct"] == pytest.approx(exact["recall_at_20pct"], abs=5e-3)
    curve = recall_curve(histogram(pos), histogram(neg))
    assert curve[-1] == pytest.approx(1.0) and np.all(np.diff(curve) >= -1e-12)


def test_noise_is_calibrated_and_metrics_stay_close():
    pos, neg = scores(1)
    noisy_pos, noisy_neg, sigma = noisy_histograms([pos], [neg], epsilon=1.0, delta=1e-6)
    # analytic Gaussian mechanism for L2 sensitivity sqrt(2) at (1, 1e-6): about 6.3
    assert 5.5 < sigma < 7.0
    # 40 releases of 62 buckets: the pooled std's standard error is 1.3% of sigma, so bounds at 10%
    # (about 8 standard errors) never fail by chance and still catch noise drawn 20% low
    residual = np.concatenate([noisy_histograms([pos], [neg], 1.0, 1e-6)[0][0] - histogram(pos) for _ in range(40)])
    assert 0.9 * sigma < residual.std() < 1.1 * sigma and abs(residual.mean()) < 0.15 * sigma
    exact = holdout_metrics(pos, neg, 0.2)
    dp = histogram_metrics(noisy_pos[0], noisy_neg[0], 0.2)
    # typical error 0.008; worst of 300 draws 0.034
    assert abs(dp["auc"] - exact["auc"]) < 0.07 and abs(dp["recall_at_20pct"] - exact["recall_at_20pct"]) < 0.07


def test_degenerate_histograms():
    empty = np.zeros(62)
    assert np.isnan(auc_from_histograms(empty, histogram(np.array([0.0]))))
    assert auc_from_histograms(histogram(np.array([5.0])), histogram(np.array([-5.0]))) == 1.0
