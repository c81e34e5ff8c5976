"""The sections both applications share (the data, the rules and ledger, MLflow tracking, the
output folders, whether evaluation is trusted), and their check that outputs stay outside the inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from lookalike.data.config import DataConfig
from lookalike.errors import ConfigError
from lookalike.privacy.config import LedgerConfig, RulesConfig
from lookalike.privacy.ledger_store import sqlite_file
from lookalike.settings import path_value, set_value


@dataclass
class MlflowConfig:
    tracking_uri: str = "sqlite:///outputs/mlflow.db"  # a local store or a server's URI; never with a password in it
    experiment_name: str = "lookalike"  # the experiment of the training runs (exports are logged beside them)
    artifact_location: Optional[str] = None  # where a local (SQLite) store keeps artifacts; a tracking server decides for itself
    registered_model_name: Optional[str] = None  # set: each trained model is registered under this name

    def check(self) -> None:
        set_value("mlflow.tracking_uri", self.tracking_uri)
        set_value("mlflow.experiment_name", self.experiment_name)


@dataclass
class PathsConfig:
    data_dir: str = "data"  # where the shipped configs look for the demo and Adult data
    output_dir: str = "outputs"  # runs, the default ledger and the default MLflow store; relative: from where you launch

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

    def check_outputs(self, outputs: dict[str, Any]) -> None:
        """``outputs`` (setting -> path) and everything both applications write (the ledger, a
        local MLflow store and its artifacts) outside the input data."""
        written = dict(outputs) | {"ledger.path": self.ledger.path} | mlflow_outputs(self.mlflow)
        check_outputs_outside_inputs(written, input_paths(self.data.publisher_path, self.data.seed_path))


def mlflow_outputs(cfg: MlflowConfig) -> dict[str, Any]:
    """Where a local MLflow store writes: its SQLite file or file-store folder, and the artifact
    folder of experiments it creates. A tracking server writes nothing on this machine."""
    store = local_store(str(cfg.tracking_uri))
    if store is None:
        return {}
    return {"mlflow.tracking_uri": str(store), "mlflow.artifact_location": cfg.artifact_location}


def local_store(uri: str) -> Path | None:
    """The file or folder behind an MLflow tracking URI: ``sqlite:///x.db``, ``file:///x`` or a
    plain path (a file store); None for a server (``http(s)://``, ``databricks``, ...)."""
    if uri.startswith("file:"):
        return Path(urlparse(uri).path or ".")
    if uri.startswith("sqlite:"):
        return sqlite_file(uri)
    if "://" in uri or uri.startswith("databricks"):
        return None
    return Path(uri)


def input_paths(publisher: Any, seed: Any) -> dict[str, Any]:
    """The input files and folders by setting; a seed given as a mapping or list, each file."""
    inputs = {"data.publisher_path": publisher}
    if isinstance(seed, Mapping):
        inputs |= {f"data.seed_path.{name}": path for name, path in seed.items()}
    elif isinstance(seed, (list, tuple)):
        inputs |= {f"data.seed_path[{i}]": path for i, path in enumerate(seed)}
    else:
        inputs["data.seed_path"] = seed
    return inputs


def check_outputs_outside_inputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse an output inside an input folder (a later run would read it back as data, or
    report the table corrupt) or onto an input file."""
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
            path = Path(str(source)).resolve()
            if target == path or (path.is_dir() and path in target.parents):
                where = "is inside" if path.is_dir() else "is"
                raise ConfigError(out_key, f"'{out}' {where} {in_key} '{source}': write outputs outside the input data")
