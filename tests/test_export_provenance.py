"""Whether a model may be exported, and as what, comes from the ledger: the DP training entry that
released it (by the SHA-256 of its weights), never from the model's own files. An audit edited
``"private"`` in a non-private model's model.json and had it exported as private."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from lookalike.cli.budget import main as budget_main
from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import run as train
from tests.conftest import make_cfg
from tests.test_export import export_cfg


def _trained(demo_dir: Path, out: Path, *overrides: str) -> tuple[Path, str]:
    cfg = make_cfg(demo_dir, out, "trainer.epochs=1", *overrides)
    train(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    return out, logged.info.run_id


def _local_copy(trained, folder: Path) -> Path:
    out, run_id = trained
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model", dst_path=str(folder)))


def _forbid_non_private(out: Path) -> None:
    (status,) = Ledger(out / "privacy_ledger.sqlite").status()
    budget_main(["--ledger", str(out / "privacy_ledger.sqlite"), "set-rules", status.fingerprint[:12], "--no-allow-non-private"])


def test_a_non_private_model_marked_private_in_its_file_is_still_non_private(demo_dir, tmp_path):
    trained = _trained(demo_dir, tmp_path / "out", "privacy.enabled=false", "trusted_evaluation=true")
    local = _local_copy(trained, tmp_path / "copy")
    meta_file = local / "artifacts" / "bundle" / "model.json"
    meta = json.loads(meta_file.read_text())
    assert meta["private"] is False
    meta_file.write_text(json.dumps(meta | {"private": True, "privacy.epsilon_spent": 1.0}))
    _forbid_non_private(trained[0])
    with pytest.raises(ConfigError, match="not allowed by the data owners' rules") as err:
        export(export_cfg(demo_dir, trained, tmp_path / "segments", f"export.model={local}"))
    assert err.value.key == "privacy.enabled" and not (tmp_path / "segments").exists()


def test_a_dp_model_is_private_by_its_ledger_entry_and_edited_weights_are_not(demo_dir, tmp_path):
    trained = _trained(demo_dir, tmp_path / "out", "privacy.target_epsilon=2")
    ledger = Ledger(trained[0] / "privacy_ledger.sqlite")
    (entry,) = [e for e in ledger.entries(ledger.status()[0].fingerprint) if e["kind"] == "train"]
    assert len(json.loads(entry["plan"])["model"]) == 64  # the entry names the weights it released
    _forbid_non_private(trained[0])
    report = export(export_cfg(demo_dir, trained, tmp_path / "segments", "trusted_evaluation=true", "export.audience_size.bins=[50]"))
    assert report["model"]["private"] is True
    # The same model with one weight nudged is a model no DP run released: non-private, refused.
    local = _local_copy(trained, tmp_path / "copy")
    weights_file = local / "artifacts" / "bundle" / "state_dict.pt"
    weights = torch.load(weights_file, weights_only=True)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 1e-3
    torch.save(weights, weights_file)
    with pytest.raises(ConfigError, match="not allowed by the data owners' rules") as err:
        export(export_cfg(demo_dir, trained, tmp_path / "edited", f"export.model={local}", "trusted_evaluation=true"))
    assert err.value.key == "privacy.enabled"
