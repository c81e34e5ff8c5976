"""Check a composed config before any work: each failure names the key and the allowed values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lookalike.errors import ConfigError
from lookalike.model.factory import KINDS as MODEL_KINDS
from lookalike.privacy.dp import validate_privacy_config
from lookalike.privacy.rules import MIN_SEED_RANGE


def _number(cfg: Any, key: str) -> float:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ConfigError(key, f"'{node}' is not a number")
    if not math.isfinite(float(node)):
        raise ConfigError(key, f"{node} is not a finite number")
    return float(node)


def _require(cfg: Any, key: str, ok, rule: str) -> None:
    value = _number(cfg, key)
    if not ok(value):
        raise ConfigError(key, f"{value:g} {rule}")


def check_outputs_outside_inputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse outputs inside an input folder: a later run would read them back as data."""
    for out_key, out in outputs.items():
        if out in (None, ""):
            continue
        from lookalike.privacy.ledger_store import sqlite_file

        file = sqlite_file(str(out))  # the path itself, or the file of a sqlite:/// URL (ledger.path)
        if file is None:  # another database's URL: nothing sits in a folder
            continue
        target = file.resolve()
        for in_key, source in inputs.items():
            if source in (None, "") or not isinstance(source, (str, Path)):
                continue
            folder = Path(str(source)).resolve()
            if folder.is_dir() and (target == folder or folder in target.parents):
                raise ConfigError(out_key, f"'{out}' is inside {in_key} '{source}': write outputs outside the input data")


def check_rule_overrides(cfg: Any) -> None:
    """The ``rules`` section may only tighten the owners' rules (checked against the ledger
    later); here only the shape of the values."""
    lo, hi = MIN_SEED_RANGE
    if cfg.rules.get("min_matching_seed_size") is not None:
        _require(cfg, "rules.min_matching_seed_size", lambda v: lo <= v <= hi and v == int(v), f"must be a whole number in [{lo}, {hi}]")
    if cfg.rules.get("min_aggregation_size") is not None:
        _require(cfg, "rules.min_aggregation_size", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    if cfg.rules.get("allow_list_output") not in (None, True, False):
        raise ConfigError("rules.allow_list_output", f"'{cfg.rules.allow_list_output}' is not true, false or null")


def validate_config(cfg: Any) -> None:
    for key in ("data.publisher_path", "data.id_column", "ledger.path", "paths.output_dir", "mlflow.tracking_uri", "mlflow.experiment_name"):
        section, name = key.split(".")
        if cfg[section][name] in (None, ""):
            raise ConfigError(key, "is not set")
    _require(cfg, "data.negative_rate", lambda v: 0 <= v <= 1, "must be in [0, 1] (the share of non-seed users used as negatives)")
    _require(cfg, "data.eval_negative_rate", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    if float(cfg.data.negative_rate) + float(cfg.data.eval_negative_rate) > 1:
        raise ConfigError("data.negative_rate", "plus data.eval_negative_rate must not exceed 1")
    _require(cfg, "data.holdout_fraction", lambda v: 0 <= v < 1, "must be in [0, 1)")
    _require(cfg, "data.vocab.max_size", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    _require(cfg, "data.vocab.min_count", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    _require(cfg, "data.max_multi_length", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    if cfg.data.get("max_robust_z") is not None:
        _require(cfg, "data.max_robust_z", lambda v: v > 0, "must be > 0 (or null: no check)")
    if cfg.data.non_finite not in ("refuse", "impute"):
        raise ConfigError("data.non_finite", f"'{cfg.data.non_finite}' is not one of refuse, impute")
    check_rule_overrides(cfg)
    _require(cfg, "trainer.epochs", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    _require(cfg, "trainer.batch_size", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    _require(cfg, "trainer.physical_batch_size", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    _require(cfg, "trainer.collective_timeout_minutes", lambda v: v > 0, "must be > 0")
    if cfg.trainer.get("optimizer") is not None and cfg.trainer.optimizer.get("lr") is not None:
        _require(cfg, "trainer.optimizer.lr", lambda v: v > 0, "must be > 0")
    if str(cfg.trainer.device) not in ("auto", "cpu") and not str(cfg.trainer.device).startswith("cuda"):
        raise ConfigError("trainer.device", f"'{cfg.trainer.device}' is not one of auto, cpu, cuda, cuda:N")
    kind = cfg.model.get("kind", "two_tower")
    if kind not in MODEL_KINDS:
        raise ConfigError("model.kind", f"'{kind}' is not one of {', '.join(MODEL_KINDS)} (pick with model=two_tower, model=logistic or model=centroid)")
    if kind == "two_tower":
        if cfg.model.similarity not in ("dot", "cosine"):
            raise ConfigError("model.similarity", f"'{cfg.model.similarity}' is not one of dot, cosine")
        for key in ("model.embedding_dim", "model.output_dim"):
            _require(cfg, key, lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
        _require(cfg, "model.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)")
    _require(cfg, "evaluation.top_fraction", lambda v: 0 < v < 1, "must be in (0, 1)")
    _require(cfg, "evaluation.epsilon", lambda v: v > 0, "must be > 0 (the DP release of held-out metrics)")
    _require(cfg, "evaluation.delta", lambda v: 0 < v < 1, "must be in (0, 1)")
    validate_privacy_config(cfg.privacy)
    check_outputs_outside_inputs({"paths.output_dir": cfg.paths.output_dir, "ledger.path": cfg.ledger.path},
                                 {"data.publisher_path": cfg.data.publisher_path, "data.seed_path": cfg.data.seed_path})
