"""What every training process computes alike before training: device, checkpoint, data,
canaries, delta, the model and its training tensors (rank 0 and, under torchrun, every rank)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lookalike.checkpoint import Checkpoint
from lookalike.distributed import World
from lookalike.errors import ConfigError
from lookalike.model.factory import build_model
from lookalike.model.towers import ModelConfig
from lookalike.prepare import prepare
from lookalike.privacy.audit import concat, plant_canaries
from lookalike.privacy.dp import resolve_delta
from lookalike.run_context import pick_device


@dataclass
class Inputs:
    device: torch.device
    resume: Checkpoint | None
    data: Any
    canaries: Any
    delta: float | None

    def training_tensors(self) -> list[torch.Tensor]:
        features, labels = self.data.train_features, self.data.training.train_labels
        if self.canaries is not None:
            extra, extra_labels = self.canaries.training_rows(len(self.data.training.audiences))
            features, labels = concat(features, extra), np.concatenate([labels, extra_labels])
        return features.tensors() + [torch.from_numpy(labels)]

    def build_model(self, cfg: DictConfig) -> torch.nn.Module:
        model = build_model(self.data.spec, len(self.data.training.audiences), ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True)))
        if self.canaries is not None:
            self.canaries.zero_tokens(model)
        return model


def gather_inputs(cfg: DictConfig, world: World | None) -> Inputs:
    """What every rank computes alike: the data, the canaries, delta and the device."""
    torch.manual_seed(int(cfg.seed))
    device = pick_device(str(cfg.trainer.device))
    if world is not None:
        if cfg.model.get("kind") == "centroid":
            raise ConfigError("model.kind", "centroid is one release, not a training loop: run it without torchrun")
        device = world.device(device)
    resume = Checkpoint.load(cfg.trainer.resume_from) if cfg.trainer.resume_from else None
    data = prepare(cfg)
    canaries = None
    if cfg.get("audit", {}).get("enabled"):
        canaries = plant_canaries(data, int(cfg.audit.canaries), float(cfg.audit.guess_fraction), np.random.default_rng(int(cfg.seed) + 1))
    delta = resolve_delta(cfg.privacy.target_delta, data.training.n_train) if cfg.privacy.enabled else None
    if resume is not None and resume.meta.get("fingerprint") != data.fingerprint:
        raise ConfigError("trainer.resume_from", "the checkpoint was trained on other data; resume with the same data.* settings")
    return Inputs(device, resume, data, canaries, delta)
