"""Export's input checks, all before any work: settings, the model's fit to the publisher data."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from lookalike.config_checks import check_outputs_outside_inputs, check_rule_overrides
from lookalike.data.features import FeatureSpec, is_list, is_number
from lookalike.errors import ConfigError, DataError

MAX_BINS, MAX_ABSOLUTE = 25, 20_000_000  # as in AWS Clean Rooms ML


def validate_export_config(cfg: Any) -> None:
    e = cfg.export
    if not e.model:
        raise ConfigError("export.model", "is not set: give a training run id, runs:/<run_id>/model or models:/<name>/<version>")
    kind = str(e.audience_size.type).upper()
    if kind not in ("ABSOLUTE", "PERCENTAGE"):
        raise ConfigError("export.audience_size.type", f"'{e.audience_size.type}' is not one of ABSOLUTE, PERCENTAGE")
    bins = list(e.audience_size.bins or [])
    if not 1 <= len(bins) <= MAX_BINS:
        raise ConfigError("export.audience_size.bins", f"has {len(bins)} values; give 1 to {MAX_BINS}")
    for b in bins:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ConfigError("export.audience_size.bins", f"'{b}' is not a number")
        if kind == "ABSOLUTE" and not (b == int(b) and 1 <= b <= MAX_ABSOLUTE):
            raise ConfigError("export.audience_size.bins", f"{b} must be a whole number of users from 1 to {MAX_ABSOLUTE:,} (ABSOLUTE)")
        if kind == "PERCENTAGE" and not 1 <= b <= 100:
            raise ConfigError("export.audience_size.bins", f"{b} must be a percentage from 1 to 100 (PERCENTAGE)")
    if len(set(bins)) != len(bins):
        raise ConfigError("export.audience_size.bins", "repeats a value")
    if e.seed_exclusion not in ("exact", "randomized"):
        raise ConfigError("export.seed_exclusion", f"'{e.seed_exclusion}' is not one of exact, randomized")
    if e.seed_exclusion == "randomized" and not float(e.seed_exclusion_epsilon) > 0:
        raise ConfigError("export.seed_exclusion_epsilon", f"{e.seed_exclusion_epsilon} must be > 0")
    if not float(e.report_epsilon) > 0:
        raise ConfigError("export.report_epsilon", f"{e.report_epsilon} must be > 0")
    if not 0 < float(e.report_delta) < 1:
        raise ConfigError("export.report_delta", f"{e.report_delta} must be in (0, 1)")
    if e.min_score is not None and not 0 <= float(e.min_score) <= 1:
        raise ConfigError("export.min_score", f"{e.min_score} must be a probability in [0, 1] or null")
    device = str(e.get("device", "auto"))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError("export.device", f"'{device}' is not one of auto, cpu, cuda, cuda:N")
    if int(e.batch_rows) < 1:
        raise ConfigError("export.batch_rows", f"{e.batch_rows} must be >= 1")
    shard = e.get("shard") or {}
    if not float(shard.get("collective_timeout_minutes", 120)) > 0:
        raise ConfigError("export.shard.collective_timeout_minutes", f"{shard.get('collective_timeout_minutes')} must be > 0")
    if shard.get("index") is not None or shard.get("count") is not None:
        if shard.get("merge"):
            raise ConfigError("export.shard.merge", "true merges the parts of all shards: leave export.shard.index and count unset for it")
        count, index = shard.get("count"), shard.get("index")
        if not isinstance(count, int) or count < 1:
            raise ConfigError("export.shard.count", f"{count} must be a whole number >= 1 when export.shard.index is set")
        if not isinstance(index, int) or not 0 <= index < count:
            raise ConfigError("export.shard.index", f"{index} must be a whole number from 0 to count - 1 = {count - 1}")
    check_outputs_outside_inputs({"export.output_dir": e.output_dir, "ledger.path": cfg.ledger.path},
                                 {"data.publisher_path": cfg.data.publisher_path, "data.seed_path": cfg.data.seed_path})
    check_rule_overrides(cfg)


def check_model_fits_publisher(spec: FeatureSpec, schema: pa.Schema, path: str, model_uri: str) -> None:
    """The publisher table must have every column the model was trained on, with a usable type."""
    for name in spec.columns:
        if name not in schema.names:
            raise DataError(f"publisher data '{path}' has no column '{name}', which model '{model_uri}' was trained on: "
                            "export with the publisher table the model was trained on")
    for feature in spec.numeric:
        t = schema.field(feature.name).type
        if not is_number(t):
            raise DataError(f"publisher data '{path}': column '{feature.name}' has type {t} but model '{model_uri}' reads it as numeric")
    for feature in spec.multi_categorical:
        t = schema.field(feature.name).type
        if not is_list(t):
            raise DataError(f"publisher data '{path}': column '{feature.name}' has type {t} but model '{model_uri}' reads it as a list")
    for feature in spec.categorical:
        t = schema.field(feature.name).type
        if is_list(t) or pa.types.is_struct(t):
            raise DataError(f"publisher data '{path}': column '{feature.name}' has type {t} but model '{model_uri}' reads it as categorical")
