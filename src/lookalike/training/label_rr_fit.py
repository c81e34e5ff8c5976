"""Training under ``privacy.mechanism=label_rr``: the seed labels randomised once, then the plain
loop (privacy/label_rr.py says why that is DP). Called after the reservation holds, like every
step that reads the seed through a mechanism."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from lookalike.privacy.label_rr import flip_probability, randomized_labels
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.config import TrainConfig
from lookalike.training.loop import TrainResult, train


def fit_label_rr(
    model: nn.Module,
    tensors: list[torch.Tensor],
    cfg: TrainConfig,
    *,
    device: torch.device,
    save_checkpoint: Callable[[Checkpoint], None] | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Flip each of ``tensors``' labels (the last tensor) at the run's target epsilon, then train
    on them without DP-SGD. Everything after the flip is post-processing: the loss on the
    flipped labels may be shown, the batch is the non-private one, and the training-set size is
    public (every user outside the evaluation and hold-out ranges, seed or not)."""
    epsilon = float(cfg.privacy.target_epsilon)
    *features, exact = tensors
    flipped = randomized_labels(exact, epsilon)
    del exact  # nothing below may read the exact labels
    plain = copy.deepcopy(cfg)
    plain.privacy.enabled = False  # the loop's plain route: no clipping, no noise, its own batch
    result = train(model, [*features, flipped], plain, delta=0.0, device=device, save_checkpoint=save_checkpoint, on_epoch_end=on_epoch_end)
    result.epsilon = epsilon
    result.flip_probability = flip_probability(epsilon, flipped.shape[1])
    return result


def label_rr_summary(result: TrainResult, target: Any) -> str:
    return (
        f"epsilon {result.epsilon:.4f} of target {target} by randomised response on the seed labels "
        f"(flip probability {result.flip_probability:.4f}, delta 0), {result.steps} plain steps"
    )
