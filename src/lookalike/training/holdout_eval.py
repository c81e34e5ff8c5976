"""Evaluate a trained model on held-out seed users against evaluation negatives, and log it.

Trusted-evaluation mode logs exact metrics (``trusted.*``). Otherwise the metrics come from
Gaussian-noised histograms (``dp.*``) whose (epsilon, delta) the run reserved in the ledger, and
the noise std is logged beside them. Either way a reach-vs-recall curve is saved as a PNG.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from lookalike.model.scoring import holdout_metrics, score
from lookalike.training.dp_metrics import (
    REACH,
    histogram,
    histogram_metrics,
    noisy_histograms,
    recall_curve,
)

log = logging.getLogger(__name__)


def evaluate_holdout(model, data, device, cfg: Any, epsilon: float, delta: float) -> tuple[float, float]:
    """Log held-out metrics; return the mean AUC over audiences (what sweeps optimise) and the
    noise multiplier (std / L2 sensitivity) of the DP release, 0 in trusted mode."""
    trusted = bool(cfg.trusted_evaluation)
    top = float(cfg.evaluation.top_fraction)
    negatives = score(model, data.eval_negative_features, device)
    audiences = data.training.audiences
    pos = [score(model, data.holdout_features[a], device)[:, i] if len(data.holdout_features[a]) else np.zeros(0) for i, a in enumerate(audiences)]
    # No evaluation negatives (a seed holding every user of the evaluation range): ``score``
    # returns a 0 x 0 array; each audience then has an empty set, whose histogram is all noise
    # in a DP run, and whose exact metrics are NaN in a trusted one, instead of an IndexError
    # after the training's epsilon is spent.
    neg = [negatives[:, i] if len(negatives) else np.zeros(0) for i in range(len(audiences))]
    prefix, curves, aucs, multiplier = ("trusted" if trusted else "dp"), {}, [], 0.0
    if trusted:
        hist_pos, hist_neg = [histogram(x) for x in pos], [histogram(x) for x in neg]
        metrics = [holdout_metrics(p, n, top) for p, n in zip(pos, neg)]
    else:
        hist_pos, hist_neg, sigma = noisy_histograms(pos, neg, epsilon, delta)
        metrics = [histogram_metrics(p, n, top) for p, n in zip(hist_pos, hist_neg)]
        mlflow.log_metrics({"dp.noise_std": sigma, "dp.eval_epsilon": epsilon, "dp.eval_delta": delta})
        multiplier = sigma / (2.0 * len(audiences)) ** 0.5
    for name, m, hp, hn in zip(audiences, metrics, hist_pos, hist_neg):
        mlflow.log_metrics({f"{prefix}.{name}.{k}": v for k, v in m.items()})
        log.info("%s held-out metrics for '%s': %s", prefix, name, ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
        curves[name] = recall_curve(hp, hn)
        aucs.append(m["auc"])
    valid = [a for a in aucs if not np.isnan(a)]
    mean_auc = float(np.mean(valid)) if valid else float("nan")
    mlflow.log_metric(f"{prefix}.auc", mean_auc)
    if not valid:
        # Decided on what was released (the noisy histograms, or the exact ones in a trusted
        # run), so the warning tells the operator nothing the metrics do not.
        log.warning("%s held-out AUC undefined (NaN): too few held-out seed users or evaluation negatives; the model is logged all the same", prefix)
    _log_curve(curves, prefix)
    return mean_auc, multiplier


def _log_curve(curves: dict[str, np.ndarray], prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, curve in curves.items():
        ax.plot(100 * REACH, curve, label=name)
    ax.plot([0, 100], [0, 1], "k:", label="random")
    ax.set(
        xlabel="reach (% of non-seed users targeted)",
        ylabel="held-out seed recall",
        title="Reach vs recall (" + ("exact, trusted" if prefix == "trusted" else "DP") + ")",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reach_recall.png"
        fig.savefig(path, dpi=110)
        mlflow.log_artifact(str(path))
    plt.close(fig)
