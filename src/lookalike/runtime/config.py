"""The sections both applications share: the data, the rules and ledger, MLflow tracking, the
output folders, and whether evaluation is trusted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lookalike.data.config import DataConfig
from lookalike.privacy.config import LedgerConfig, RulesConfig
from lookalike.settings import set_value


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


@dataclass
class SharedSections:
    """What ``TrainConfig`` and ``ExportConfig`` both hold."""

    data: DataConfig = field(default_factory=DataConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trusted_evaluation: bool = False  # exact seed-derived metrics: only with the data owners' leave
