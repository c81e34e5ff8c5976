"""What one training run knows about itself: its ledger reservation, tags, metrics and folder.

Keeps the bookkeeping out of the training script so that ``train.run`` reads top to bottom.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lookalike.checkpoint import Checkpoint
from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import is_url

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"'{name}' asked for but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def run_directory(cfg: Any) -> Path:
    """Hydra's output folder for this job, or a fresh one under ``paths.output_dir/runs``."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    path = Path(str(cfg.paths.output_dir)) / "runs" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def discard_run_directory() -> None:
    """Remove Hydra's job folder if it holds nothing but Hydra's own config and log."""
    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


class RunContext:
    def __init__(self, cfg: Any, data: Any, delta: float | None, ledger: Ledger):
        self.cfg, self.data, self.delta, self.ledger = cfg, data, delta, ledger
        self.private = bool(cfg.privacy.enabled)
        # Held-out metrics are released with DP unless the run is trusted (then they are exact).
        dp_eval = self.private and not cfg.trusted_evaluation
        self.eval_epsilon = float(cfg.evaluation.epsilon) if dp_eval else 0.0
        self.eval_delta = float(cfg.evaluation.delta) if dp_eval else 0.0
        self.eval_noise_multiplier = 0.0  # noise std / L2 sensitivity of the evaluation release
        self.entry_id: int | None = None
        self.resumed = False
        self.training_started = False
        self.result = None

    def open_reservation(self, resume: Checkpoint | None) -> None:
        """Reserve the target epsilon, or adopt the reservation of the run being resumed."""
        if not self.private:
            return
        if resume is not None:
            entry = self.ledger.entry(int(resume.meta["ledger_entry_id"]))
            if entry["status"] != "reserved":
                raise LookalikeError(f"checkpoint's ledger entry {entry['id']} is already {entry['status']}: a finished run cannot be resumed")
            self.entry_id, self.resumed = entry["id"], True
            return
        # One reservation covers training and the DP release of its held-out metrics.
        self.entry_id = self.ledger.reserve(
            self.data.fingerprint, float(self.cfg.privacy.target_epsilon) + self.eval_epsilon, float(self.delta) + self.eval_delta,
            budget_epsilon=float(self.cfg.ledger.budget_epsilon),
            budget_delta=None if self.cfg.ledger.budget_delta is None else float(self.cfg.ledger.budget_delta),
            kind="train", description=f"lookalike-train {self.cfg.mlflow.experiment_name}",
        )
        log.info("ledger entry %d: reserved epsilon %.4g (training %.4g, evaluation %.4g) on data %s", self.entry_id,
                 float(self.cfg.privacy.target_epsilon) + self.eval_epsilon, self.cfg.privacy.target_epsilon, self.eval_epsilon, self.data.fingerprint[:12])

    def trained(self, result: Any) -> None:
        self.result = result

    def finish(self) -> None:
        if self.private and self.entry_id is not None:
            events = list(self.result.history) + ([(self.eval_noise_multiplier, 1.0, 1)] if self.eval_epsilon else [])
            self.ledger.record_spent(self.entry_id, self.result.epsilon + self.eval_epsilon, events)

    def begin_training(self) -> None:
        """From here on the data has been touched by DP steps: a failure keeps the charge."""
        self.training_started = True

    def abort(self) -> None:
        """On failure a reservation stays charged, unless training never began."""
        if self.private and self.entry_id is not None and not self.training_started and not self.resumed:
            self.ledger.release(self.entry_id)
            log.info("ledger entry %d released: the run failed before training", self.entry_id)

    def checkpoint_meta(self) -> dict:
        return {"fingerprint": self.data.fingerprint, "ledger_entry_id": self.entry_id, "ledger_path": str(self.ledger.path)}

    def run_name(self) -> str:
        return ("dp" if self.private else "NON-PRIVATE") + f"-{self.cfg.model.get('kind', 'two_tower')}-" + time.strftime("%H%M%S")

    def tags(self) -> dict[str, str]:
        return {
            "lookalike.kind": "train",
            "lookalike.privacy": "dp" if self.private else "non-private",
            "lookalike.trusted_evaluation": str(bool(self.cfg.trusted_evaluation)).lower(),
            "lookalike.fingerprint": self.data.fingerprint,
            "lookalike.publisher_fingerprint": self.data.publisher_fingerprint,
            "lookalike.seed_fingerprint": self.data.seed_fingerprint,
            "lookalike.audiences": ",".join(self.data.training.audiences),
            "privacy.accountant": str(self.cfg.privacy.accountant) if self.private else "none",
            "ledger.entry_id": str(self.entry_id) if self.entry_id is not None else "none",
            "ledger.path": self.ledger.path if is_url(self.ledger.location) else str(Path(self.ledger.location).resolve()),
        }

    def data_metrics(self) -> dict[str, float]:
        scan = self.data.scan
        metrics = {"scan.files_scanned": scan.files_scanned, "scan.rows_scanned": scan.rows_scanned,
                   "scan.bytes_scanned": scan.bytes_scanned, "scan.rows_in_window": scan.rows_in_window,
                   "data.training_examples": self.data.n_train}
        if self.cfg.trusted_evaluation:
            metrics |= {f"trusted.{name}.matched_seed_users": n for name, n in self.data.training.matched.items()}
        return metrics

    def privacy_metrics(self) -> dict[str, float]:
        r = self.result
        if not self.private:
            return {"privacy.steps": r.steps}
        return {"privacy.epsilon_spent": r.epsilon, "privacy.eval_epsilon": self.eval_epsilon,
                "privacy.total_epsilon": r.epsilon + self.eval_epsilon, "privacy.target_epsilon": float(self.cfg.privacy.target_epsilon),
                "privacy.delta": self.delta, "privacy.noise_multiplier": r.noise_multiplier,
                "privacy.sample_rate": r.sample_rate, "privacy.steps": r.steps}

    def model_meta(self, run_id: str) -> dict:
        # The split parameters let export find the same held-out seed users (hash-based split).
        return {"private": self.private, "run_id": run_id, "fingerprint": self.data.fingerprint,
                "id_column": str(self.cfg.data.id_column), "split_seed": int(self.cfg.seed),
                "holdout_fraction": float(self.cfg.data.holdout_fraction)} | {k: v for k, v in self.privacy_metrics().items()}

    def summary(self, model_uri: str) -> dict:
        return {"model_uri": model_uri, "ledger_entry_id": self.entry_id, "ledger_path": str(self.ledger.path),
                "accountant": str(self.cfg.privacy.accountant) if self.private else None,
                "history": self.result.history} | self.privacy_metrics()

    def describe(self) -> str:
        r = self.result
        if not self.private:
            return f"NON-PRIVATE model, {r.steps} steps"
        return f"epsilon {r.epsilon:.4f} of target {self.cfg.privacy.target_epsilon} (delta {self.delta:.3g}), {r.steps} steps"
