"""Private hyperparameter tuning: train a secret, random number K of trials, each with settings
drawn at random from ``tuning.space``, and keep the one whose noisy reach score is highest
(training/reach_score.py); only that trial leaves the room (privacy/selection_bound.py has the
guarantee).

The search is charged as one run, exactly what a single run with the same settings reserves:
every trial's DP-SGD and score release together cost at most ``privacy.target_epsilon``, so each
trial trains with more noise (found below by bisection); the chosen model's held-out metrics are
then released once at ``evaluation.epsilon`` (optimistic: the same held-out users chose it),
and the size estimate once before the trials.
Every trial runs the same mechanism: the space holds only settings that do not change it
(config.TUNABLE), and each trial's recorded steps are checked against the plan.

K must stay secret, so trials log nothing: no MLflow metrics, no per-epoch lines, no progress
bar, no checkpoints. What still grows with K is the run's wall time: a publisher who can time
the run learns about K, which weakens the bound's amortisation over trials (each trial's own
guarantee stands). This package does not pad the time; whoever must hide K has to.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from lookalike.errors import ConfigError, LookalikeError
from lookalike.model.config import ModelConfig
from lookalike.privacy.accounting import epsilon_from_history, smallest_noise
from lookalike.privacy.selection_bound import draw_trials, selection_epsilon, trial_rdp
from lookalike.training.batch_rule import batch_plan
from lookalike.training.config import TrainConfig, with_settings
from lookalike.training.inputs import Inputs
from lookalike.training.loop import TrainResult, train
from lookalike.training.reach_score import reach_score

log = logging.getLogger(__name__)
ACCOUNTANT = "rdp"  # the selection bound is an RDP bound; each trial is accounted in RDP too


@dataclass(frozen=True)
class TrialPlan:
    trial_epsilon: float  # one trial's DP-SGD on its own (RDP, at the training delta)
    noise_multiplier: float
    sample_rate: float
    steps: int
    batch_size: int  # the logical batch every trial takes
    score_multiplier: float  # the reach score's noise std / L2 sensitivity
    selection_epsilon: float  # the best-of-K release: every trial's training and score
    delta: float  # of the selection: the training delta

    @property
    def events(self) -> list[tuple[float, float, int]]:
        return [(self.noise_multiplier, self.sample_rate, self.steps), (self.score_multiplier, 1.0, 1)]


@dataclass
class Tuned:
    result: TrainResult
    settings: dict[str, Any]
    model_config: ModelConfig


def plan_trials(cfg: TrainConfig, examples: int, delta: float) -> TrialPlan:
    """The smallest noise multiplier at which the best-of-K release fits ``privacy.target_epsilon``.
    Trials take the batch, and so the sample rate and steps, that a single run at that epsilon
    takes (training/batch_rule.py); the search pays with more noise per step, which keeps Poisson
    subsampling's amplification where it works best."""
    budget = float(cfg.privacy.target_epsilon)
    score = float(cfg.tuning.score_noise)
    mean, shape = float(cfg.tuning.mean_trials or 1), float(cfg.tuning.shape)
    with _quiet():
        planned = batch_plan(cfg, examples, delta)
    batch = planned.batch
    batches = math.ceil(examples / batch)
    rate, steps = 1.0 / batches, planned.epochs * batches

    def spent(sigma: float) -> float:
        return selection_epsilon([(sigma, rate, steps), (score, 1.0, 1)], delta, mean, shape)

    sigma = smallest_noise(spent, budget)
    if sigma is None:
        raise LookalikeError(f"private tuning found no noise multiplier that fits {mean:g} trials on average in epsilon {budget:.3g}; lower tuning.mean_trials")
    trial_epsilon = epsilon_from_history([(sigma, rate, steps)], delta, ACCOUNTANT)
    return TrialPlan(trial_epsilon, sigma, rate, steps, batch, score, spent(sigma), delta)


def check_affordable(cfg: TrainConfig, delta: float) -> None:
    """Before anything is reserved: the score releases alone must leave the trials room to
    train within ``privacy.target_epsilon`` (a data-independent check)."""
    budget = float(cfg.privacy.target_epsilon)
    floor = selection_epsilon([(float(cfg.tuning.score_noise), 1.0, 1)], delta, float(cfg.tuning.mean_trials or 1), float(cfg.tuning.shape))
    if floor >= 0.9 * budget:
        raise ConfigError(
            "tuning.mean_trials",
            f"{cfg.tuning.mean_trials:g} trials on average spend epsilon {floor:.3g} of privacy.target_epsilon {budget:g} on their "
            "score releases alone; lower tuning.mean_trials or raise tuning.score_noise",
        )


def tune(cfg: TrainConfig, inputs: Inputs, estimate: int, examples: int, plan: TrialPlan) -> Tuned:
    """Run the trials and return the best; K and the other trials stay in this function."""
    rng = np.random.default_rng(secrets.randbits(128))  # OS entropy: K and the draws are secret
    choices = cfg.tuning.choices()
    base = _trial_base(cfg, plan)
    tensors = inputs.training_tensors()
    best: tuple[float, Tuned] | None = None
    with _quiet():
        for _ in range(draw_trials(float(cfg.tuning.mean_trials or 1), float(cfg.tuning.shape), rng)):
            settings = {key: copy.deepcopy(values[int(rng.integers(len(values)))]) for key, values in choices.items()}
            trial = with_settings(base, settings)
            model_cfg = inputs.model_config(trial, estimate)
            # Initial weights from OS entropy: drawn from the logged seed, the released weights
            # would match one regenerated trial's and tell the chosen index, hence K >= index.
            torch.manual_seed(secrets.randbits(63))
            model = inputs.build_model(trial, model_cfg)
            grad_sample = inputs.grad_sample_route(trial, model)
            result = train(
                model,
                tensors,
                trial,
                delta=inputs.delta or 0.0,
                device=inputs.device,
                examples=examples,
                noise_multiplier=plan.noise_multiplier,
                grad_sample=grad_sample,
            )
            _check_mechanism(result, plan)
            score = reach_score(result.model, inputs.data, inputs.device, float(cfg.evaluation.top_fraction), plan.score_multiplier)
            if best is None or score > best[0]:
                best = (score, Tuned(result, settings, model_cfg))
    assert best is not None  # K >= 1
    return best[1]


def _trial_base(cfg: TrainConfig, plan: TrialPlan) -> TrainConfig:
    """What every trial shares: the plan's batch and epsilon, RDP accounting, no progress bar."""
    trial = copy.deepcopy(cfg)
    trial.privacy = replace(cfg.privacy, target_epsilon=plan.trial_epsilon, accountant=ACCOUNTANT)
    trial.trainer = replace(cfg.trainer, batch_size=plan.batch_size, progress_bar=False, resume_from=None)
    return trial


def _check_mechanism(result: TrainResult, plan: TrialPlan) -> None:
    """A trial must not have spent more than the plan: its recorded steps against the plan's."""
    recorded = trial_rdp(list(result.history) + [(plan.score_multiplier, 1.0, 1)])
    if not np.all(recorded <= trial_rdp(plan.events) * (1 + 1e-9) + 1e-12):
        raise LookalikeError(f"a trial's DP-SGD steps {result.history} differ from the tuning plan {plan.events[0]}: the run is stopped, its reservation kept")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the package's info lines (one per epoch, per batch rule, per model choice): their
    count would tell K."""
    logger = logging.getLogger("lookalike")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
