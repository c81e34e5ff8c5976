"""The epsilon of the cheapest trial a multirun sweep could run, for its budget pre-check.

Hydra composes the multirun's own config without the sweep's overrides, so that config's epsilon
is no trial's (``-m privacy.target_epsilon=0.5,0.5`` leaves the default 3 there). Each trial's
settings come from the swept command-line overrides and the sweeper's ``params`` (Optuna's
search space, or the basic sweeper's). Swept config groups (``experiment=adult,demo``) are
composed, one config per combination, as Hydra composes the trials; swept epsilons and switches
then take their cheapest value (an interval its lower end), so the pre-check refuses only a
sweep whose every trial the budget would refuse. Each trial still reserves its own epsilon.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from lookalike.errors import LookalikeError
from lookalike.training.config import TrainConfig, train_config

# The settings whose value changes what a trial reserves (training/sweep.py trial_epsilon).
EPSILONS = ("privacy.target_epsilon", "privacy.size_epsilon", "evaluation.epsilon")
# Each switch at this value reserves less: no evaluation release, no DP at all.
CHEAP_SWITCHES = {"trusted_evaluation": True, "privacy.enabled": False}


def trial_epsilon(cfg: TrainConfig) -> float:
    """What one trial reserves: training, the DP size and match counts, and the DP release of its held-out metrics."""
    if not cfg.privacy.enabled:
        return 0.0
    return float(cfg.privacy.target_epsilon) + float(cfg.privacy.size_epsilon) + (0.0 if cfg.trusted_evaluation else float(cfg.evaluation.epsilon))


def sweep_overrides(config: DictConfig) -> list[Override]:
    """The swept command-line overrides, then the sweeper's ``params`` (as Hydra's sweepers merge them)."""
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parser = OverridesParser.create(config_loader=loader)
    task = [o for o in parser.parse_overrides(list(config.hydra.overrides.task)) if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    searched = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    return task + searched


def values(override: Override) -> list[Any]:
    if override.is_discrete_sweep():
        return list(override.sweep_iterator())
    value = override.value()
    start = getattr(value, "start", None)
    return [start] if override.is_interval_sweep() else [value]


def is_group(override: Override) -> bool:
    loader = override.config_loader
    return loader is not None and bool(loader.get_group_options(override.key_or_group))


def cheapest_trial_epsilon(config: DictConfig, base: TrainConfig) -> float:
    """The least epsilon any trial of this sweep reserves (``base``: the multirun's own config, typed)."""
    swept = sweep_overrides(config)
    groups = [o for o in swept if is_group(o)]
    settings: dict[str, list[Any]] = {}
    for override in swept:
        if not is_group(override):
            settings.setdefault(override.key_or_group, []).extend(values(override))
    configs = [base]
    if groups:
        # the fixed overrides stay, each trial's group choices are added, as the sweepers compose trials
        parser = OverridesParser.create()
        fixed = [str(line) for line in config.hydra.overrides.task if not parser.parse_override(str(line)).is_sweep_override()]
        loader = GlobalHydra.instance().config_loader()
        configs, first_error = [], None
        for choice in itertools.product(*[[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in groups]):
            try:
                configs.append(train_config(loader.load_sweep_config(config, fixed + list(choice))))
            except LookalikeError as exc:  # that trial fails its own config check: it reserves nothing
                first_error = first_error or exc
        if not configs and first_error is not None:
            raise first_error
    return min(_cheapest(cfg, settings) for cfg in configs)


def _cheapest(cfg: TrainConfig, settings: dict[str, list[Any]]) -> float:
    cfg = copy.deepcopy(cfg)  # the multirun's own config is used on after the check
    for key, cheap in CHEAP_SWITCHES.items():
        if cheap in settings.get(key, []):
            _set(cfg, key, cheap)
    for key in EPSILONS:
        # a value that is no positive number fails that trial's own check: it reserves nothing
        numbers = [float(v) for v in settings.get(key, []) if _positive(v)]
        if numbers:
            _set(cfg, key, min(numbers))
    return float(trial_epsilon(cfg))


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *sections, name = dotted.split(".")
    for section in sections:
        cfg = getattr(cfg, section)
    setattr(cfg, name, value)
