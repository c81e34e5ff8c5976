"""The typed config of ``lookalike-train``: one dataclass per section, registered with Hydra's
ConfigStore (``lookalike_schema/train``: extend it in a config of your own), and the function that
checks a composed config into it. Library code takes these dataclasses, never a DictConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from lookalike.errors import ConfigError
from lookalike.model.config import ModelConfig
from lookalike.model.registry import model_kind
from lookalike.privacy.config import PrivacyConfig
from lookalike.runtime.config import SharedSections, check_outputs_outside_inputs
from lookalike.runtime.typed_config import to_typed
from lookalike.settings import device_name, number, require, whole


def _adam() -> dict[str, Any]:
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.005}


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    epochs: int = 5
    batch_size: Optional[int] = None  # the expected logical batch (q = batch / N); null: the rule in training/batch_rule.py
    batch_rule_noise: float = 2.0  # the noise multiplier the batch rule aims at
    physical_batch_size: int = 512
    optimizer: dict[str, Any] = field(default_factory=_adam)  # instantiated by Hydra, partial: given the parameters
    resume_from: Optional[str] = None
    progress_bar: bool = True
    collective_timeout_minutes: float = 120

    def check(self) -> None:
        device_name("trainer.device", self.device)
        whole("trainer.epochs", self.epochs)
        if self.batch_size is not None:
            whole("trainer.batch_size", self.batch_size)
        require("trainer.batch_rule_noise", self.batch_rule_noise, lambda v: 0.3 <= v <= 20, "must be in [0.3, 20]")
        whole("trainer.physical_batch_size", self.physical_batch_size)
        require("trainer.collective_timeout_minutes", self.collective_timeout_minutes, lambda v: v > 0, "must be > 0")
        if self.optimizer.get("lr") is not None:
            require("trainer.optimizer.lr", self.optimizer["lr"], lambda v: v > 0, "must be > 0")


@dataclass
class EvaluationConfig:
    top_fraction: float = 0.2  # recall and lift at the top 20% of non-seed users
    epsilon: float = 0.2  # the DP release of held-out metrics
    delta: float = 1.0e-6

    def check(self) -> None:
        require("evaluation.top_fraction", self.top_fraction, lambda v: 0 < v < 1, "must be in (0, 1)")
        require("evaluation.epsilon", self.epsilon, lambda v: v > 0, "must be > 0 (the DP release of held-out metrics)")
        require("evaluation.delta", self.delta, lambda v: 0 < v < 1, "must be in (0, 1)")


@dataclass
class AuditConfig:
    enabled: bool = False
    canaries: int = 1000
    guess_fraction: float = 0.1

    def check(self) -> None:
        if self.enabled:
            whole("audit.canaries", self.canaries, 2)
            require("audit.guess_fraction", self.guess_fraction, lambda v: 0 < v <= 0.5, "must be in (0, 0.5]")


@dataclass
class TrainConfig(SharedSections):
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    seed: int = 42  # weight init, data order and splits; never privacy noise (OS entropy)

    def check(self) -> None:
        number("seed", self.seed)
        model_kind(self.model.kind)
        if self.audit.enabled and self.model.input_projection:
            # The canaries are tokens of their own; a projection fitted before they are planted has no row for them.
            raise ConfigError("audit.enabled", "the canary audit needs the tower's embeddings: run it with model.input_projection=null")
        if not self.privacy.enabled and not self.trusted_evaluation:
            raise ConfigError(
                "privacy.enabled", "false trains a model that leaks the seed: allowed only with trusted_evaluation=true (synthetic or self-owned data)"
            )
        check_outputs_outside_inputs(
            {"paths.output_dir": self.paths.output_dir, "ledger.path": self.ledger.path},
            {"data.publisher_path": self.data.publisher_path, "data.seed_path": self.data.seed_path},
        )


def train_config(cfg: Any) -> TrainConfig:
    """The composed config, checked and typed (one-line ConfigError naming the key otherwise)."""
    return to_typed(cfg, TrainConfig, other_commands=("export",))


ConfigStore.instance().store(group="lookalike_schema", name="train", node=TrainConfig)
