"""What every training process computes before training: device, checkpoint, data, canaries,
delta, the model and its training tensors (rank 0 and, under torchrun, every rank on its share)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lookalike.data.encode import concat
from lookalike.errors import ConfigError, one_line
from lookalike.model.config import ModelConfig
from lookalike.model.projected_inputs import ProjectedInputs
from lookalike.model.registry import build_model, model_kind
from lookalike.parallel.collective import collective_for
from lookalike.parallel.world import World
from lookalike.privacy.accounting import resolve_delta
from lookalike.runtime.runs import pick_device
from lookalike.training.canaries import plant_canaries
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.config import TrainConfig
from lookalike.training.dp_sgd.route import GradSampleRoute, structural_route
from lookalike.training.loop import check_optimizer
from lookalike.training.model_rule import model_for_seed, seed_users_estimate
from lookalike.training.prepare import prepare
from lookalike.training.tower_checks import check_tower_output, grad_sample_route, refuse_batch_mixing


@dataclass
class Inputs:
    device: torch.device
    resume: Checkpoint | None
    data: Any
    canaries: Any
    delta: float | None
    primary: bool = True  # rank 0 (or the only process): it alone trains on the canaries

    def training_tensors(self, mechanism: str = "dp_sgd") -> list[torch.Tensor]:
        """This process's training examples, the canaries included on rank 0 (inputs..., labels);
        for ``label_rr``, randomised response's population with its exact labels (flipped later)."""
        if mechanism == "label_rr":
            assert self.data.population_features is not None, "prepare lays out a population for every run that may use label_rr"
            return self.data.population_features().tensors() + [torch.from_numpy(self.data.training.population_labels)]
        features, labels = self.data.train_features, self.data.training.train_labels
        if self.canaries is not None and self.primary:
            extra, extra_labels = self.canaries.training_rows(len(self.data.training.audiences))
            features, labels = concat(features, extra), np.concatenate([labels, extra_labels])
        return features.tensors() + [torch.from_numpy(labels)]

    def examples(self, estimate: int) -> int:
        """What the sample rate is one batch of: the DP estimate of the training examples over
        all processes, plus the planted canaries (synthetic: a fixed count, Canaries.planted)."""
        planted = self.canaries.planted if self.canaries is not None else 0
        return estimate + planted

    def model_config(self, cfg: TrainConfig, estimate: int | None, mechanism: str = "dp_sgd", by_mean: bool = False) -> ModelConfig:
        """The model this run trains: ``cfg.model`` or, for a DP run's small seed, the small-seed
        rule's (training/model_rule.py) from ``estimate``, the DP estimate of the training
        examples. A non-private run has no noise to shrink the model for: it trains ``cfg.model``.
        ``mechanism`` is the run's (RunContext.mechanism: label_rr whenever the setting says so);
        ``by_mean``: a small model would be fitted by the seed mean (training/seed_mean_fit.py)."""
        if not cfg.privacy.enabled or mechanism == "label_rr":
            return cfg.model  # randomised response trains every user on plain gradients: no noise either
        examples = estimate
        data = cfg.data
        seed_users = None if examples is None else seed_users_estimate(examples, self.data.in_background_range, data.negative_rate, data.holdout_fraction)
        components = self.data.projection.matrix.shape[1] if self.data.projection is not None else None
        return model_for_seed(cfg.model, seed_users, components, by_mean)

    def check_model(self, cfg: TrainConfig, distributed: bool = False) -> None:
        """Build the configured model, and a learned one's optimizer on its parameters, before the
        reservation: what cannot be built (a size past any memory, say) or trained with DP-SGD
        (training/tower_checks.py) is refused in one line here instead of failing with a
        traceback once the budget is held. A small seed's model (model_rule.py, decided after
        the DP counts) is smaller than the configured one."""
        key = "model.user_tower" if cfg.model.custom_tower else "model"
        with torch.random.fork_rng(devices=[]):  # the seeded weights of the run stay what they were
            try:
                model = self.build_model(cfg, self.model_config(cfg, None))
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(key, f"cannot be built ({one_line(exc)}): fix its settings") from None
            refuse_batch_mixing(model, key)
            if cfg.model.custom_tower:
                check_tower_output(model.get_submodule("user_tower"), self.data.spec, int(cfg.model.output_dim), key)
            if model_kind(cfg.model.kind).learned:
                check_optimizer(cfg, model.parameters())
            route = self.grad_sample_route(cfg, model)
        if distributed and route is not None and route.mode != "fused":
            chosen = "privacy.grad_sample_mode" if cfg.privacy.grad_sample_mode != "fused" else key
            raise ConfigError(chosen, f"trains on Opacus' per-sample route ({route.reason}), which runs in one process: run it without torchrun")

    def grad_sample_route(self, cfg: TrainConfig, model: torch.nn.Module) -> GradSampleRoute | None:
        """The per-example gradient route a DP run of ``model`` takes (dp_sgd/route.py); your own
        tower's is tried on made-up users first. None: not a DP-SGD run."""
        if not (cfg.privacy.enabled and model_kind(cfg.model.kind).learned) or cfg.label_rr:
            return None
        if not cfg.model.custom_tower:
            return structural_route(model, cfg.privacy.grad_sample_mode)
        with torch.random.fork_rng(devices=[]):  # dropout in the trial steps draws from the seeded generator
            return grad_sample_route(model, self.data.spec, cfg.privacy.grad_sample_mode, "model.user_tower")

    def build_model(self, cfg: TrainConfig, model_cfg: ModelConfig) -> torch.nn.Module:
        model = build_model(self.data.spec, len(self.data.training.audiences), model_cfg)
        if model_cfg.input_projection:
            projected = model.get_submodule("user_tower.projected")
            assert isinstance(projected, ProjectedInputs) and self.data.projection is not None  # prepare fits one whenever the setting asks
            projected.fill(self.data.projection.leading(model_cfg.input_projection))  # the rule's width may be below the fit's
        if self.canaries is not None:
            self.canaries.zero_tokens(model)
        return model


def gather_inputs(cfg: TrainConfig, world: World | None) -> Inputs:
    """What every rank computes alike; an error on any rank is raised on all of them."""
    torch.manual_seed(int(cfg.seed))
    device = pick_device(str(cfg.trainer.device))
    if world is not None:
        if not model_kind(cfg.model.kind).learned:
            raise ConfigError("model.kind", f"{cfg.model.kind} is one release, not a training loop: run it without torchrun")
        device = world.device(device)
    resume = Checkpoint.load(cfg.trainer.resume_from) if cfg.trainer.resume_from else None
    collective = collective_for(world)
    data = prepare(cfg, collective)
    canaries = None
    if cfg.audit.enabled:
        # The same canary tokens on every rank, so every rank builds the same model; which are
        # included is drawn from OS entropy (not the logged seed) and only rank 0's draw is used:
        # it alone trains on them, counts them in the sample rate and audits.
        canaries = plant_canaries(data, cfg.audit.canaries, cfg.audit.guess_fraction, np.random.default_rng(secrets.randbits(128)))
    delta = resolve_delta(cfg.privacy.target_delta, data.publisher_rows) if cfg.privacy.enabled else None
    if resume is not None and resume.meta.get("users") != data.users.digest:
        raise ConfigError("trainer.resume_from", "the checkpoint was trained on other data; resume with the same data.* settings")
    return Inputs(device, resume, data, canaries, delta, collective.primary)
