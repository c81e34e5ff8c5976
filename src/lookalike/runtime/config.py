"""The sections both applications share (the data, the rules and ledger, MLflow tracking, the
output folders, whether evaluation is trusted), and their check that outputs stay outside the inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lookalike.data.config import DataConfig
from lookalike.errors import ConfigError
from lookalike.privacy.config import LedgerConfig, RulesConfig
from lookalike.privacy.ledger_store import sqlite_file
from lookalike.settings import path_value, set_value


@dataclass
class MlflowConfig:
    tracking_uri: str = "sqlite:///outputs/mlflow.db"
    experiment_name: str = "lookalike"
    artifact_location: Optional[str] = None
    registered_model_name: Optional[str] = None

    def check(self) -> None:
        set_value("mlflow.tracking_uri", self.tracking_uri)
        set_value("mlflow.experiment_name", self.experiment_name)


@dataclass
class PathsConfig:
    data_dir: str = "data"
    output_dir: str = "outputs"

    def check(self) -> None:
        set_value("paths.output_dir", self.output_dir)
        path_value("paths.output_dir", self.output_dir)


@dataclass
class SharedSections:
    """What ``TrainConfig`` and ``ExportConfig`` both hold."""

    data: DataConfig = field(default_factory=DataConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trusted_evaluation: bool = False  # exact seed-derived metrics: only with the data owners' leave


def check_outputs_outside_inputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse outputs inside an input folder: a later run would read them back as data."""
    for out_key, out in outputs.items():
        if out in (None, ""):
            continue
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
