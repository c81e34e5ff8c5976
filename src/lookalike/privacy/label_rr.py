"""Randomised response on seed labels: ``privacy.mechanism=label_rr``.

The secret is seed membership, which for a publisher user is a label: the publisher's features
are the publisher's own. So a run can protect the labels alone (label DP, Ghazi et al., "Deep
Learning with Label Differential Privacy", NeurIPS 2021) and then train with no clipping and no
noise on the gradients:

- The training population is fixed before any label is read: every publisher user whose keyed
  draws put them outside the evaluation and hold-out ranges, seed or not (data/matching.py,
  ``population_rate``). Joining the seed changes no row of it, only that user's labels.
- Each user's label for each of the k audiences is flipped, independently, with probability
  p = 1 / (1 + e^(epsilon / k)). For one label, P[out | in] / P[out | out] <= (1 - p) / p =
  e^(epsilon / k); a user who joins the seed changes at most k labels, so every output of the
  training (a post-processing of these labels and public features) is (epsilon, 0)-DP for the
  relation of docs/privacy.md: one user in the seed, in any audiences, or in none.
- The draws come from OS entropy (privacy/mechanisms.py), never from the logged seed.

A model trained on flipped labels learns P[flipped | x] = p + (1 - 2p) P[seed | x], an increasing
function of the clean probability, so its ranking of users is the one a lookalike needs. What
it costs is statistical: the signal shrinks by 1 - 2p (0.46 at epsilon 1), which a large seed
and a large table make up for, and a small seed among many users does not (docs/utility.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lookalike.privacy.mechanisms import entropy_generator


def flip_probability(epsilon: float, audiences: int) -> float:
    """The chance that each of a user's ``audiences`` labels is flipped, for ``epsilon`` in all."""
    if not (epsilon > 0 and math.isfinite(epsilon)) or audiences < 1:
        raise ValueError(f"randomised response needs epsilon > 0 and at least one audience (got {epsilon}, {audiences})")
    tail = math.exp(-epsilon / audiences)  # 1 / (1 + e^x) as e^-x / (1 + e^-x): no overflow at a large epsilon
    return tail / (1.0 + tail)


def randomized_labels(labels: np.ndarray | torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``labels`` ([users, audiences], 0/1) with each entry flipped with :func:`flip_probability`;
    float32. ``generator`` is for tests that measure the flip rate; a run passes none and gets
    an OS-entropy one."""
    exact = torch.as_tensor(labels, dtype=torch.float32)
    if exact.dim() != 2:
        raise ValueError(f"labels must be [users, audiences], got shape {tuple(exact.shape)}")
    if exact.numel() and not bool(((exact == 0) | (exact == 1)).all()):
        raise ValueError("labels must be 0 or 1: randomised response flips membership, not scores")
    p = flip_probability(epsilon, exact.shape[1])
    draws = torch.rand(exact.shape, generator=generator or entropy_generator(torch.device("cpu")))
    flip = (draws < p).to(torch.float32)
    return exact + flip - 2 * exact * flip  # exact XOR flip, in floats
