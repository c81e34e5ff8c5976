"""MLflow plumbing: where runs go, what a run's params look like, and how the model is logged."""

from __future__ import annotations

import fcntl
import json
import logging
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow

from lookalike.errors import ConfigError, LookalikeError
from lookalike.model.bundle import bundle_tower, load_bundle
from lookalike.model.custom import code_paths
from lookalike.privacy.ledger_store import mask_urls, without_password
from lookalike.runtime.config import MlflowConfig, SharedSections
from lookalike.runtime.room import load_room

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///path`` absolute, so runs land where the config says
    regardless of the working directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def setup_experiment(cfg: MlflowConfig) -> str:
    """Point MLflow at ``mlflow.tracking_uri`` and return the experiment id (created if new)."""
    uri = resolve_tracking_uri(cfg.tracking_uri)
    mlflow.set_tracking_uri(uri)
    name = cfg.experiment_name
    with _store_lock(uri):
        return _experiment(cfg, uri, name)


@contextmanager
def _store_lock(uri: str):
    """Runs that open a fresh SQLite store at once all ran its schema migrations, and all but
    one died in them: the first to arrive creates the store while the others wait."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///") :] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment(cfg: MlflowConfig, uri: str, name: str) -> str:
    try:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # A local store keeps artifacts under the output folder; a server decides for itself.
        location = None
        if (uri.startswith("sqlite:") or uri.startswith("file:")) and cfg.artifact_location:
            location = Path(cfg.artifact_location).resolve().as_uri()
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:
        shown = without_password(uri)
        reason = str(exc).splitlines()[0].replace(uri, shown) if str(exc).strip() else type(exc).__name__
        raise ConfigError("mlflow.tracking_uri", f"cannot use '{shown}': {mask_urls(reason)}") from exc


def resume_run_id(checkpoint) -> str | None:
    """The MLflow run a checkpoint belongs to, if it is in the current tracking store."""
    run_id = checkpoint.meta.get("mlflow_run_id") if checkpoint is not None else None
    if run_id is None:
        return None
    try:
        mlflow.get_run(run_id)
        return run_id
    except mlflow.exceptions.MlflowException:
        log.warning("checkpoint's MLflow run %s is not in this tracking store; logging to a new run", run_id)
        return None


def flat_params(cfg: SharedSections) -> dict[str, str]:
    """The resolved config as dotted keys, e.g. ``privacy.target_epsilon``."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = without_password(str(node))[:MAX_PARAM_LENGTH]

    walk(asdict(cfg), "")
    return out


def log_params(params: dict[str, str]) -> None:
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[start : start + 100]))


def feature_schema(spec):
    """The publisher feature columns a model reads, as MLflow's schema."""
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    inputs: list[ColSpec | TensorSpec] = [ColSpec("double", f.name) for f in spec.numeric]
    inputs += [ColSpec("string", f.name) for f in spec.categorical]
    inputs += [ColSpec(Array("string"), f.name) for f in spec.multi_categorical]
    return Schema(inputs)


def model_signature(spec, audiences: list[str]):
    """Inputs: the publisher feature columns; outputs: one probability per audience."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=feature_schema(spec), outputs=Schema([ColSpec("double", a) for a in audiences]))


def log_publisher_input(path: str, users_digest: str, spec) -> None:
    """The run's input in MLflow's dataset column: the publisher table, by its path, the digest
    of its users' ids (the ledger's key, public) and its feature schema. Nothing of the seed: a
    digest of the seed ids would let anyone confirm a guessed seed."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local path either way
        source = resolve_dataset_source(str(Path(path).resolve()))
    dataset = MetaDataset(source, name=Path(path).name, digest=users_digest[:16], schema=feature_schema(spec))  # type: ignore[abstract]  # profile has a default
    mlflow.log_input(dataset, context="training")


def synthetic_input_example(spec):
    """One made-up row (feature means, most common categories): never a real user's data,
    which must not travel inside the model artifact."""
    import pandas as pd

    row = {f.name: f.typical() for f in spec.numeric}
    row |= {f.name: (f.vocabulary[0] if f.vocabulary else "") for f in spec.categorical}
    row |= {f.name: [list(f.vocabulary[:2])] for f in spec.multi_categorical}
    return pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in row.items()})


def log_model(bundle_dir: Path, registered_model_name: str | None, signature=None, input_example=None) -> str:
    """Log the bundle as a pyfunc model; return its ``models:/`` URI. A user tower of your own
    travels with it: its top-level package goes into the model's ``code/`` folder (model/custom.py)."""
    requirements = [f"lookalike=={_version()}", "torch", "pyarrow", "pandas"]
    info = mlflow.pyfunc.log_model(
        code_paths=code_paths(bundle_tower(bundle_dir)) or None,
        name="model",
        python_model=str(Path(__file__).parents[1] / "model" / "serving.py"),
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=requirements,
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_model_name or None,
    )
    return info.model_uri


def download_bundle(model_uri: str) -> Path:
    """Fetch a logged model (``runs:/...``, ``models:/...``) and return its bundle folder."""
    return download_model(model_uri)[0]


def download_model(model_uri: str) -> tuple[Path, Path | None]:
    """Fetch a logged model: its bundle folder, and the folder of the code it carries (the
    ``code/`` of ``code_paths``, which ``mlflow.pyfunc.load_model`` puts first on ``sys.path``;
    None when it carries none)."""
    import yaml

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except mlflow.exceptions.MlflowException as exc:
        raise LookalikeError(f"model '{model_uri}' cannot be fetched: {mask_urls(str(exc).splitlines()[0])}") from exc
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise LookalikeError(f"'{model_uri}' is not an MLflow model (no MLmodel file)")
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    relative = flavor.get("artifacts", {}).get("bundle", {}).get("path")
    if relative is None:
        raise LookalikeError(f"'{model_uri}' is not a lookalike model (no bundle artifact)")
    code = flavor.get("code")
    return local / relative, (local / code if code and (local / code).is_dir() else None)


def load_logged_model(model_uri: str, key: str) -> tuple[Any, Any, dict]:
    """A logged model rebuilt for scoring: (model, feature spec, metadata), as ``load_bundle``.

    A user tower of your own is imported from the code the model carries, put first on
    ``sys.path`` as ``mlflow.pyfunc.load_model`` does, except under a room file: there the
    model's files are the operator's to edit, so the tower's module must be one the room's
    ``code`` list allows (runtime/room.py), imported from the room's own packages."""
    bundle, code = download_model(model_uri)
    target = bundle_tower(bundle)
    room = load_room()
    if target is not None and room is not None and room.code is not None:
        room.check_code(target, key)
    elif target is not None and code is not None and str(code) not in sys.path:
        sys.path.insert(0, str(code))
    return load_bundle(bundle)


def log_dict_artifact(payload: dict, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=1, default=str))
        mlflow.log_artifact(str(path))


def _version() -> str:
    from lookalike import __version__

    return __version__
