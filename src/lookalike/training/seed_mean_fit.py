"""The small-seed model fitted by one Gaussian release instead of DP-SGD (``model.small_seed_fit``).

The small-seed rule's model scores a user by a linear function of the publisher's whitened
principal components z (fitted on every publisher user, no seed: their mean is 0 and their
covariance the identity over the publisher's users). The linear discriminant that separates a
seed from that population is then the seed's mean of z: score(x) = m . z(x). Its DP estimate is
one Gaussian release of the seed users' summed, clipped z; no new count is released (the mean
divides by the run's DP seed counts, already charged). DP-SGD spends the same budget on a
hundred or more noisy steps of a logistic loss whose first gradient is that same sum; the single
release keeps more of it (docs/utility.md, "The small-seed fit").

Privacy: adding or removing one user's seed membership changes the sum of each audience it is in
by at most ``clip`` (each z is clipped to that norm), so sqrt(audiences) * clip in all (a user may
be in every seed). The release is a Gaussian mechanism, accounted like one full-batch DP step
(q = 1, one step) so the ledger composes it with the run's other releases. The noise comes from
OS entropy, never the generator the run's logged ``seed`` fixes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from lookalike.model.audience import AudienceTower
from lookalike.privacy.mechanisms import entropy_generator
from lookalike.training.centroid_fit import gaussian_release
from lookalike.training.loop import TrainResult

log = logging.getLogger(__name__)


def component_clip(components: int) -> float:
    """The clipping norm for k whitened components: their typical norm, sqrt(k) (each has unit
    variance over the publisher's users), so that most users keep their whole vector."""
    return math.sqrt(components)


def noisy_seed_sums(z: torch.Tensor, labels: torch.Tensor, clip: float, noise_multiplier: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each audience's sum of its seed users' ``z`` (labels [n, A] of 0/1), every row clipped to
    norm ``clip``, plus Gaussian noise of std noise_multiplier * clip * sqrt(A): [A, k]."""
    clipped = z * (clip / z.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    sums = labels.t().to(z.dtype) @ clipped
    std = noise_multiplier * clip * math.sqrt(labels.shape[1])
    return sums + std * torch.randn(sums.shape, generator=generator, device=sums.device, dtype=sums.dtype)


def dp_sgd_instead(distributed: bool, audited: bool, resumed: bool) -> str | None:
    """Why a run whose rule chose the seed mean trains its small model with DP-SGD instead; None: it does not."""
    if distributed:
        return "torchrun shares the sum across ranks, which this release does not"
    if audited:
        return "the one-run audit measures DP-SGD's steps"
    if resumed:
        return "a resume continues a DP-SGD run (a seed-mean run writes no checkpoint)"
    return None


@torch.no_grad()
def fit_seed_mean(model: nn.Module, tensors: list[torch.Tensor], cfg: Any, delta: float, seed_users: list[float], background: float) -> TrainResult:
    """Fit the small-seed two-tower ``model`` (a linear head on ``input_projection`` components,
    dot similarity, training/model_rule.py) by one Gaussian release; ``tensors``: inputs..., labels.

    ``seed_users`` (each audience's training seed users, from the run's DP counts) and
    ``background`` (the training set's non-seed users: a count of keyed draws, public) turn the
    release into the plug-in discriminant's log-odds of a seed user among the training examples,
    m . z - |m|^2 / 2 + log(seed users / background) with m = the noisy sum / seed users, so the
    score is a probability like a DP-SGD model's (``export.min_score`` reads it); the ranking is
    the sum's direction alone."""
    *inputs, labels = tensors
    z = model.get_submodule("user_tower.projected")(*inputs)
    k = z.shape[1]
    head, audiences = list(model.get_submodule("user_tower.mlp").children())[-1], model.get_submodule("audience_tower")
    assert isinstance(head, nn.Linear) and head.weight.shape[0] >= k, "the rule makes the head at least as wide as its components"
    assert isinstance(audiences, AudienceTower) and audiences.similarity == "dot"
    result = TrainResult(model, steps=1, epochs=1)
    multiplier = gaussian_release(result, cfg, delta)
    clip = component_clip(k)
    sums = noisy_seed_sums(z, labels, clip, multiplier, entropy_generator(z.device))
    # The user vector is z itself (padded with zeros); each audience's vector its noisy mean.
    users = torch.tensor([max(float(n), 1.0) for n in seed_users], dtype=sums.dtype, device=sums.device)
    means = sums / users[:, None]
    head.weight.zero_()
    head.weight[:k, :k] = torch.eye(k, dtype=head.weight.dtype, device=head.weight.device)
    head.bias.zero_()
    audiences.weight.zero_()
    audiences.weight[:, :k] = means
    audiences.bias.copy_(-0.5 * (means**2).sum(1) + torch.log(users / max(float(background), 1.0)))
    log.info("small-seed fit: one Gaussian release of the summed components (clip %.3g, noise multiplier %.3f), epsilon %.4f", clip, multiplier, result.epsilon)
    return result
