"""The model bundle: weights, feature spec and hyperparameters in one folder.

This is everything export needs to rebuild inputs and score users. Conversion is pure and
tested: ``load_bundle(save_bundle(...))`` gives back a model with identical outputs. A model
with your own user tower (model/custom.py) records its ``_target_`` and arguments in
``model.json``; loading it imports that module, which must be importable where it loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lookalike.data.features import FeatureSpec
from lookalike.errors import LookalikeError
from lookalike.model.config import tower_target
from lookalike.model.custom import require_importable
from lookalike.model.registry import build_model
from lookalike.model.towers import ModelConfig

WEIGHTS, SPEC, META = "state_dict.pt", "feature_spec.json", "model.json"


def save_bundle(folder: str | Path, model: torch.nn.Module, spec: FeatureSpec, audiences: list[str], extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / WEIGHTS)
    (folder / SPEC).write_text(spec.to_json())
    meta = {"format": "lookalike-two-tower/1", "model": getattr(model, "config").to_dict(), "audiences": audiences} | (extra or {})
    (folder / META).write_text(json.dumps(meta, indent=1))
    return folder


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes, bytes): what the ledger records for
    the model a run released, so that export learns from the ledger, not from an editable file,
    whether (and under which budget) a model was trained with DP."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def bundle_tower(folder: str | Path) -> str | None:
    """The ``_target_`` of the bundle's own user tower (None: the built-in one), read without
    importing anything: what a room checks before the module's code runs."""
    meta = Path(folder) / META
    return tower_target(json.loads(meta.read_text()).get("model", {}).get("user_tower")) if meta.is_file() else None


def load_bundle(folder: str | Path) -> tuple[torch.nn.Module, FeatureSpec, dict]:
    """Rebuild the model (on CPU, in eval mode), its feature spec and its metadata."""
    folder = Path(folder)
    missing = [name for name in (WEIGHTS, SPEC, META) if not (folder / name).is_file()]
    if missing:
        raise LookalikeError(f"model folder '{folder}' is not a lookalike model: {missing[0]} is missing")
    meta = json.loads((folder / META).read_text())
    spec = FeatureSpec.from_json((folder / SPEC).read_text())
    target = tower_target(meta["model"].get("user_tower"))
    if target is not None:
        require_importable(target, f"model folder '{folder}'")
    model = build_model(spec, len(meta["audiences"]), ModelConfig(**meta["model"]))
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    return model, spec, meta
