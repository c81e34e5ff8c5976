"""The typed config of ``lookalike-train``: one dataclass per section, registered with Hydra's
ConfigStore (``lookalike_schema/train``: extend it in a config of your own), and the function that
checks a composed config into it. Library code takes these dataclasses, never a DictConfig."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from lookalike.errors import ConfigError
from lookalike.model.config import ModelConfig
from lookalike.model.registry import model_kind
from lookalike.privacy.config import PrivacyConfig
from lookalike.runtime.config import SharedSections
from lookalike.runtime.typed_config import check_all, to_typed
from lookalike.settings import device_name, number, require, whole
from lookalike.training.mechanism_rule import label_rr_blockers


def _adam() -> dict[str, Any]:
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.005}


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    epochs: Optional[int] = None  # passes over the training set; null: 5, more for a DP run whose rule batch would pass batch_rule_max
    batch_size: Optional[int] = None  # the expected logical batch (q = batch / N); null: the rule in training/batch_rule.py
    batch_rule_noise: float = 2.0  # the noise multiplier the batch rule aims at
    batch_rule_max: int = 1024  # epochs null: a DP run takes more epochs (up to 20) rather than a larger rule batch than this
    physical_batch_size: Optional[int] = None  # largest batch pushed through the model at once (logical batches are split); null: 8,192 fused, 512 per-sample
    optimizer: dict[str, Any] = field(default_factory=_adam)  # instantiated by Hydra, partial: given the parameters
    sparse_tables_from: Optional[int] = 100_000  # embedding tables of at least this many rows train sparsely (table_route.py); null: none
    table_lr: Optional[float] = None  # DP-SGD's lr for those tables; null: a row's per-step noise matches optimizer.lr
    resume_from: Optional[str] = None  # a checkpoints/last.pt: continues the weights, the optimizer and the privacy accounting
    progress_bar: bool = True  # shows the step and epsilon (no loss in DP runs)
    collective_timeout_minutes: float = 120  # torchrun: how long a rank waits in a collective (rank 0 hashes every file meanwhile)

    def check(self) -> None:
        device_name("trainer.device", self.device)
        if self.epochs is not None:
            whole("trainer.epochs", self.epochs)
        whole("trainer.batch_rule_max", self.batch_rule_max)
        if self.batch_size is not None:
            whole("trainer.batch_size", self.batch_size)
        require("trainer.batch_rule_noise", self.batch_rule_noise, lambda v: 0.3 <= v <= 20, "must be in [0.3, 20]")
        if self.physical_batch_size is not None:
            whole("trainer.physical_batch_size", self.physical_batch_size)
        if self.sparse_tables_from is not None:
            whole("trainer.sparse_tables_from", self.sparse_tables_from, 0)
        if self.table_lr is not None:
            require("trainer.table_lr", self.table_lr, lambda v: v > 0, "must be > 0 (or null: derived from optimizer.lr)")
        require("trainer.collective_timeout_minutes", self.collective_timeout_minutes, lambda v: v > 0, "must be > 0")
        if self.optimizer.get("lr") is not None:
            require("trainer.optimizer.lr", self.optimizer["lr"], lambda v: v > 0, "must be > 0")


@dataclass
class EvaluationConfig:
    top_fraction: float = 0.2  # recall and lift at the top 20% of non-seed users
    epsilon: float = 0.2  # the DP release of held-out metrics
    delta: Optional[float] = None  # null: min(1e-6, 1/(100 R)) for the R publisher users

    def check(self) -> None:
        require("evaluation.top_fraction", self.top_fraction, lambda v: 0 < v < 1, "must be in (0, 1)")
        require("evaluation.epsilon", self.epsilon, lambda v: v > 0, "must be > 0 (the DP release of held-out metrics)")
        if self.delta is not None:
            require("evaluation.delta", self.delta, lambda v: 0 < v < 1, "must be in (0, 1)")


@dataclass
class AuditConfig:
    enabled: bool = False  # the one-run canary audit (audit=one_run): logs audit.epsilon_lower_bound
    canaries: int = 1000  # blank canary users, each trained on with probability 1/2
    guess_fraction: float = 0.1  # the top and bottom fraction of canaries by score are the "in" and "out" guesses

    def check(self) -> None:
        if self.enabled:
            whole("audit.canaries", self.canaries, 2)
            require("audit.guess_fraction", self.guess_fraction, lambda v: 0 < v <= 0.5, "must be in (0, 0.5]")


def _default_space() -> dict[str, Any]:
    return {"trainer": {"optimizer": {"lr": [0.002, 0.005, 0.01]}}, "privacy": {"max_grad_norm": [0.5, 1.0, 2.0]}}


# What a trial may vary: settings that leave every trial's privacy mechanism (noise multiplier,
# sample rate, steps, score release) the same. The noise multiplier is relative to the
# clipping norm, so max_grad_norm is one of them.
TUNABLE = (
    "trainer.optimizer.lr",
    "trainer.optimizer.weight_decay",
    "privacy.max_grad_norm",
    "model.embedding_dim",
    "model.hidden_dims",
    "model.output_dim",
    "model.similarity",
    "model.dropout",
    "model.small_seed_users",
)


@dataclass
class TuningConfig:
    """Private hyperparameter tuning (training/private_tuning.py): a random number of trials, the
    best one kept, charged as one run. ``mean_trials`` null: one plain run."""

    mean_trials: Optional[float] = None  # E[K], K the secret number of trials
    shape: float = 0.0  # the truncated negative binomial's shape: 0 logarithmic (cheapest), 1 geometric
    score_noise: float = 16.0  # noise std / L2 sensitivity of each trial's reach score (training/reach_score.py)
    space: dict[str, Any] = field(default_factory=_default_space)  # nested like the config: key -> list of values

    def choices(self) -> dict[str, list]:
        """The space as dotted key -> values."""
        flat: dict[str, list] = {}

        def walk(node: Any, prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    flat[f"{prefix}{key}"] = value

        walk(self.space, "")
        return flat

    def check(self) -> None:
        if self.mean_trials is None:
            return
        require("tuning.mean_trials", self.mean_trials, lambda v: 1 <= v <= 1000, "must be in [1, 1000] (the mean number of trials)")
        require("tuning.shape", self.shape, lambda v: 0 <= v <= 100, "must be in [0, 100]: 0 logarithmic, 1 geometric")
        require("tuning.score_noise", self.score_noise, lambda v: 0.3 <= v <= 1000, "must be in [0.3, 1000] (a noise multiplier)")
        choices = self.choices()
        if not choices:
            raise ConfigError("tuning.space", "is empty: give each setting to tune a list of values, e.g. tuning.space.trainer.optimizer.lr=[0.002,0.01]")
        for key, values in choices.items():
            if key not in TUNABLE:
                raise ConfigError(
                    f"tuning.space.{key}", f"cannot be tuned (it would change the privacy mechanism between trials); tunable: {', '.join(TUNABLE)}"
                )
            if not isinstance(values, list) or not values:
                raise ConfigError(f"tuning.space.{key}", f"'{values}' must be a non-empty list of values")


@dataclass
class TrainConfig(SharedSections):
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
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
        if self.tuning.mean_trials is not None:
            self._check_tuning()
        if self.label_rr:
            self._check_label_rr()
        self.check_outputs({"paths.output_dir": self.paths.output_dir})

    @property
    def label_rr(self) -> bool:
        """Randomised response on the seed labels protects this run, set explicitly (privacy/label_rr.py;
        ``auto`` decides after the DP counts: RunContext.mechanism)."""
        return bool(self.privacy.enabled) and self.privacy.mechanism == "label_rr"

    def _check_label_rr(self) -> None:
        """One draw of the labels, trained on in one process: what would draw them again, or
        needs DP-SGD's steps, is refused before anything is reserved."""
        for key, what in label_rr_blockers(self)[:1]:
            raise ConfigError(key, f"privacy.mechanism=label_rr needs {what}")

    def _check_tuning(self) -> None:
        """Private tuning picks the best trial by a noisy count of held-out seed users, in one process."""
        needs = (
            (not self.privacy.enabled, "privacy.enabled=true: a non-private search is a Hydra sweep (hparams_search=optuna)"),
            (self.trusted_evaluation, "trusted_evaluation=false: the best trial is chosen by a DP count of held-out seed users"),
            (not model_kind(self.model.kind).learned, f"a trained model; model.kind={self.model.kind} is one release"),
            (self.data.holdout_fraction <= 0, "held-out seed users to choose by: data.holdout_fraction > 0"),
            (self.audit.enabled, "audit.enabled=false: the canary audit is of one training run"),
            (self.trainer.resume_from is not None, "a fresh run: a tuned run is not checkpointed, so it cannot resume"),
        )
        for failed, what in needs:
            if failed:
                raise ConfigError("tuning.mean_trials", f"is set, which needs {what}")
        for key, values in self.tuning.choices().items():
            for value in values:
                try:
                    with_settings(self, {key: value})
                except (ConfigError, TypeError, ValueError) as exc:
                    raise ConfigError(f"tuning.space.{key}", f"value '{value}' is not a valid {key}: {exc}") from None


def with_settings(cfg: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with dotted ``settings`` applied, each section it touches checked again."""
    trial = copy.deepcopy(cfg)
    for key, value in settings.items():
        *path, last = key.split(".")
        node: Any = trial
        for part in path:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        if isinstance(node, dict):
            node[last] = value
        else:
            setattr(node, last, value)
    for section in (trial.model, trial.trainer, trial.privacy):
        check_all(section)
    return trial


def train_config(cfg: Any) -> TrainConfig:
    """The composed config, checked and typed (one-line ConfigError naming the key otherwise)."""
    return to_typed(cfg, TrainConfig, other_commands=("export",))


ConfigStore.instance().store(group="lookalike_schema", name="train", node=TrainConfig)
