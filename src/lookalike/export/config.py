"""The typed config of ``lookalike-export`` (the ``export`` section and the shared ones), registered
with Hydra's ConfigStore as ``lookalike_schema/export``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from lookalike.errors import ConfigError
from lookalike.privacy.ledger_store import mask_urls
from lookalike.runtime.config import SharedSections
from lookalike.runtime.typed_config import to_typed
from lookalike.settings import device_name, number, one_of, path_value, require, whole

MAX_BINS, MAX_ABSOLUTE = 25, 20_000_000  # as in AWS Clean Rooms ML
# An experiment config sets both commands; export reads none of training's sections.
TRAINING_SECTIONS = ("model", "privacy", "trainer", "evaluation", "audit", "seed")

# export.model's URI schemes: MLflow's own stores and this machine (a bare run id, latest or a path has none).
URI_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/")
MODEL_SCHEMES = ("runs", "models", "file")


@dataclass
class AudienceSizeConfig:
    type: str = "PERCENTAGE"  # or ABSOLUTE (users)
    bins: list[Any] = field(default_factory=lambda: [1, 5, 10, 20])  # 1 to 25 sizes; each bin's segment is a prefix of the next

    def check(self) -> None:
        self.type = str(self.type).upper()
        one_of("export.audience_size.type", self.type, ("ABSOLUTE", "PERCENTAGE"))
        key = "export.audience_size.bins"
        if not 1 <= len(self.bins) <= MAX_BINS:
            raise ConfigError(key, f"has {len(self.bins)} values; give 1 to {MAX_BINS}")
        for b in self.bins:
            number(key, b)
            if self.type == "ABSOLUTE" and not (b == int(b) and 1 <= b <= MAX_ABSOLUTE):
                raise ConfigError(key, f"{b} must be a whole number of users from 1 to {MAX_ABSOLUTE:,} (ABSOLUTE)")
            if self.type == "PERCENTAGE" and not 1 <= b <= 100:
                raise ConfigError(key, f"{b} must be a percentage from 1 to 100 (PERCENTAGE)")
        if len(set(self.bins)) != len(self.bins):
            raise ConfigError(key, "repeats a value")


@dataclass
class ShardConfig:
    """Scoring split over processes (torchrun) or separate jobs (index/count, then merge)."""

    index: Optional[int] = None  # this shard, 0 to count - 1; null: no sharding
    count: Optional[int] = None  # the number of shards
    merge: bool = False  # true: merge every shard's part, write segments and report, charge the ledger once
    parts_dir: str = "outputs/export_parts"  # where shards write their parts: storage every shard and the merge reach
    collective_timeout_minutes: float = 120  # torchrun: how long a rank waits for the others (rank 0 merges meanwhile)

    def check(self) -> None:
        require("export.shard.collective_timeout_minutes", self.collective_timeout_minutes, lambda v: v > 0, "must be > 0")
        if self.index is None and self.count is None:
            return
        if self.merge:
            raise ConfigError("export.shard.merge", "true merges the parts of all shards: leave export.shard.index and count unset for it")
        if self.count is None or self.count < 1:
            raise ConfigError("export.shard.count", f"{self.count} must be a whole number >= 1 when export.shard.index is set")
        if self.index is None or not 0 <= self.index < self.count:
            raise ConfigError("export.shard.index", f"{self.index} must be a whole number from 0 to count - 1 = {self.count - 1}")


@dataclass
class ExportSettings:
    model: Optional[str] = None  # a training run id, runs:/<run_id>/model, models:/<name>/<version> or latest
    output_dir: str = "outputs/segments"  # segments, report.json and report.png
    overwrite: bool = False  # replace a previous export there (only the files its manifest lists)
    audiences: Optional[list[str]] = None  # audiences to export; null: every audience of the model
    audience_size: AudienceSizeConfig = field(default_factory=AudienceSizeConfig)
    min_score: Optional[float] = None  # drop users whose score (the model's probability) is below this
    include_seed_in_output: bool = False  # seed users first in segments; only where the owners allow it
    seed_exclusion: str = "exact"  # or randomized (randomised response at seed_exclusion_epsilon)
    seed_exclusion_epsilon: float = 3.0  # randomised exclusion's epsilon per audience, charged to the ledger
    report_epsilon: float = 0.5  # the report's seed-derived counts get Gaussian noise at this epsilon, charged to the ledger
    report_delta: Optional[float] = None  # null: min(1e-6, 1/(100 R)) for the R users scored
    device: str = "auto"  # where export scores users: auto (CUDA when present), cpu, cuda, cuda:N
    batch_rows: int = 65536  # rows per record batch while streaming the publisher data
    shard: ShardConfig = field(default_factory=ShardConfig)

    def check(self) -> None:
        if not self.model:
            raise ConfigError("export.model", "is not set: give a training run id, runs:/<run_id>/model or models:/<name>/<version>")
        scheme = URI_SCHEME.match(str(self.model).strip())
        if scheme and scheme.group(1).lower() not in MODEL_SCHEMES:
            # mlflow would fetch http://, s3://, ... from anywhere: a model comes from the tracking store or this machine
            raise ConfigError(
                "export.model",
                f"'{mask_urls(str(self.model))}' is no model of the tracking store: give a training run id, runs:/<run_id>/model, "
                "models:/<name>/<version>, latest or a local model folder",
            )
        one_of("export.seed_exclusion", self.seed_exclusion, ("exact", "randomized"))
        if self.seed_exclusion == "randomized":
            require("export.seed_exclusion_epsilon", self.seed_exclusion_epsilon, lambda v: v > 0, "must be > 0")
        require("export.report_epsilon", self.report_epsilon, lambda v: v > 0, "must be > 0")
        if self.report_delta is not None:
            require("export.report_delta", self.report_delta, lambda v: 0 < v < 1, "must be in (0, 1)")
        if self.min_score is not None:
            require("export.min_score", self.min_score, lambda v: 0 <= v <= 1, "must be a probability in [0, 1] or null")
        device_name("export.device", self.device)
        path_value("export.output_dir", self.output_dir)
        whole("export.batch_rows", self.batch_rows)


@dataclass
class ExportConfig(SharedSections):
    export: ExportSettings = field(default_factory=ExportSettings)

    def check(self) -> None:
        # The staging folder is a sibling of export.output_dir (export/output.py), so it lies in an
        # input folder only when export.output_dir does: checking the folder covers it.
        self.check_outputs({"export.output_dir": self.export.output_dir})


def export_config(cfg: Any) -> ExportConfig:
    """The composed config, checked and typed (one-line ConfigError naming the key otherwise)."""
    return to_typed(cfg, ExportConfig, other_commands=TRAINING_SECTIONS)


ConfigStore.instance().store(group="lookalike_schema", name="export", node=ExportConfig)
