"""What a training run reports about itself: its MLflow run name, tags and metrics, the model's
metadata, the privacy summary and the closing log line.

Everything here is public or released with DP, except the ``trusted.`` metrics, which only a
trusted run (``trusted_evaluation=true``) logs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow

from lookalike.errors import LookalikeError
from lookalike.model.bundle import save_bundle
from lookalike.privacy.ledger_store import is_url
from lookalike.runtime.tracking import log_dict_artifact, log_model, model_signature, synthetic_input_example
from lookalike.training.inputs import Inputs
from lookalike.training.label_rr_fit import label_rr_summary
from lookalike.training.loop import TrainResult
from lookalike.training.run_context import RunContext

log = logging.getLogger("lookalike.train")


def save_and_record(ctx: RunContext, inputs: Inputs, result: TrainResult, run_id: str, run_dir: Path) -> None:
    """The model bundle and its MLflow model, then the spend in the ledger and the run."""
    data = inputs.data
    # The spend first: a run whose record fails (a spend above its reservation) logs no model.
    ctx.finish()
    bundle = save_bundle(run_dir / "bundle", result.model.cpu(), data.spec, data.training.audiences, extra=model_meta(ctx, run_id))
    model_uri = log_model(bundle, ctx.cfg.mlflow.registered_model_name, model_signature(data.spec, data.training.audiences), synthetic_input_example(data.spec))
    mlflow.log_metrics(privacy_metrics(ctx))
    mlflow.log_param("trainer.table_route", result.table_route)  # dense, or which sparse route (training/table_route.py)
    mlflow.log_param("privacy.grad_sample_mode_used", result.grad_sample_mode)  # fused, hooks or functorch (dp_sgd/route.py); none: not DP-SGD
    mlflow.set_tag("lookalike.model_uri", model_uri)
    log_dict_artifact(summary(ctx, model_uri), "privacy_summary.json")
    log.info("run %s done: %s", run_id, describe(ctx))


def log_audit(found: dict, result: TrainResult) -> None:
    """The one-run audit's guesses and its epsilon lower bound (training/canaries.py), beside the accountant's."""
    mlflow.log_metrics(found)
    mlflow.set_tag("lookalike.audit", "one_run")
    log.info(
        "one-run audit: %d of %d guesses right, epsilon lower bound %.3f (accountant: %s)",
        found["audit.correct"],
        found["audit.guesses"],
        found["audit.epsilon_lower_bound"],
        f"{result.epsilon:.3f}" if result.epsilon else "non-private",
    )


def model_rule_params(model_cfg: Any) -> dict:
    """What the small-seed rule made of the model settings (a function of the DP counts), as MLflow params."""
    return {"model.input_projection_used": model_cfg.input_projection or "null", "model.output_dim_used": model_cfg.output_dim}


def run_name(ctx: RunContext) -> str:
    return ("dp" if ctx.private else "NON-PRIVATE") + f"-{ctx.cfg.model.kind}-" + time.strftime("%H%M%S")


def tags(ctx: RunContext) -> dict[str, str]:
    return {
        "lookalike.kind": "train",
        "lookalike.tuning": "none" if ctx.cfg.tuning.mean_trials is None else "private",
        "lookalike.privacy": "dp" if ctx.private else "non-private",
        "lookalike.trusted_evaluation": str(bool(ctx.cfg.trusted_evaluation)).lower(),
        "lookalike.fingerprint": ctx.budget.fingerprint if ctx.budget else "none",
        "lookalike.users": ctx.data.users.digest,
        "lookalike.audiences": ",".join(ctx.data.training.audiences),
        "privacy.accountant": str(ctx.cfg.privacy.accountant) if ctx.private else "none",
        "privacy.mechanism": ctx.mechanism,
        "ledger.entry_id": str(ctx.entry_id) if ctx.entry_id is not None else "none",
        "ledger.path": ctx.ledger.path if is_url(ctx.ledger.location) else str(Path(ctx.ledger.location).resolve()),
    }


def data_metrics(ctx: RunContext) -> dict[str, float]:
    scan = ctx.data.scan
    # Publisher-side counts are public; the training-set size and match counts are seed-derived.
    metrics = {
        "scan.files_scanned": scan.files_scanned,
        "scan.rows_scanned": scan.rows_scanned,
        "scan.bytes_scanned": scan.bytes_scanned,
        "scan.rows_in_window": scan.rows_in_window,
    }
    if ctx.cfg.trusted_evaluation:
        metrics |= {f"trusted.{name}.matched_seed_users": n for name, n in ctx.data.training.matched.items()}
        # What trained: randomised response's population, or DP-SGD's seed plus background.
        label_rr = ctx.mechanism == "label_rr"
        metrics["trusted.training_examples"] = int(ctx.data.training.population_rows.size) if label_rr else ctx.data.n_train
    return metrics


def privacy_metrics(ctx: RunContext) -> dict[str, float]:
    r = _trained(ctx)
    # The logical batch: set, or the batch rule's from the DP size estimate (safe to release).
    if not ctx.private:
        return {"privacy.steps": r.steps, "trainer.batch_size_used": r.batch_size, "trainer.epochs_used": r.epochs}
    size = {"privacy.size_epsilon": ctx.size_epsilon, "data.training_examples_dp": ctx.size.value} if ctx.size is not None else {}
    spent, eval_epsilon, tuning = r.epsilon or 0.0, ctx.eval_epsilon, {}  # a private run always has an epsilon
    if ctx.selection is not None:
        # Every trial's training and reach score, released as the best one: one epsilon.
        spent = ctx.selection.selection_epsilon
        tuning = {"privacy.tuning.trial_epsilon": r.epsilon or 0.0, "privacy.tuning.mean_trials": float(ctx.cfg.tuning.mean_trials or 1)}
    flips = {}
    if r.flip_probability is not None:
        # The users randomised response trained on: a count of keyed draws, seed or not (public).
        flips = {"privacy.flip_probability": r.flip_probability, "data.population_users": float(ctx.data.training.population_rows.size)}
    return (
        size
        | tuning
        | flips
        | {
            "privacy.epsilon_spent": spent,
            "privacy.eval_epsilon": eval_epsilon,
            "privacy.total_epsilon": spent + ctx.size_epsilon + eval_epsilon,
            "privacy.target_epsilon": float(ctx.cfg.privacy.target_epsilon),
            "privacy.delta": ctx.delta or 0.0,
            "privacy.noise_multiplier": r.noise_multiplier or 0.0,
            "privacy.sample_rate": r.sample_rate or 0.0,
            "privacy.steps": r.steps,
            "trainer.batch_size_used": r.batch_size,
            "trainer.epochs_used": r.epochs,
        }
    )


def model_meta(ctx: RunContext, run_id: str) -> dict:
    # The split parameters let export find the same held-out seed users (hash-based split).
    return {
        "private": ctx.private,
        "run_id": run_id,
        "fingerprint": ctx.budget.fingerprint if ctx.budget else None,
        "id_column": str(ctx.cfg.data.id_column),
        "split_seed": int(ctx.cfg.seed),
        "holdout_fraction": float(ctx.cfg.data.holdout_fraction),
    } | {k: v for k, v in privacy_metrics(ctx).items()}


def summary(ctx: RunContext, model_uri: str) -> dict:
    return {
        "model_uri": model_uri,
        "ledger_entry_id": ctx.entry_id,
        "ledger_path": str(ctx.ledger.path),
        "accountant": str(ctx.cfg.privacy.accountant) if ctx.private else None,
        "history": _trained(ctx).history,
    } | privacy_metrics(ctx)


def describe(ctx: RunContext) -> str:
    r = _trained(ctx)
    if not ctx.private:
        return f"NON-PRIVATE model, {r.steps} steps"
    if ctx.selection is not None:
        return (
            f"epsilon {ctx.selection.selection_epsilon:.4f} of target {ctx.cfg.privacy.target_epsilon} for the tuned search "
            f"(every trial's training and score; delta {ctx.selection.delta:.3g}), best trial {r.steps} steps"
        )
    if r.flip_probability is not None:
        return label_rr_summary(r, ctx.cfg.privacy.target_epsilon)
    return f"epsilon {r.epsilon:.4f} of target {ctx.cfg.privacy.target_epsilon} (delta {ctx.delta:.3g}), {r.steps} steps"


def _trained(ctx: RunContext) -> TrainResult:
    if ctx.result is None:
        raise LookalikeError("the run has no training result yet")
    return ctx.result
