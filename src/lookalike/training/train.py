"""`lookalike-train`, the recipe: type the config, prepare the data, reserve the budget, train
with DP-SGD, evaluate, log to MLflow. Each step is a library call that takes the typed config.

    lookalike-train experiment=demo privacy.target_epsilon=2
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import mlflow
from omegaconf import DictConfig

import lookalike.runtime.resolvers  # noqa: F401  (registers ${run_id:} before Hydra composes)
from lookalike.errors import ConfigError, LookalikeError
from lookalike.model.registry import model_kind
from lookalike.parallel.world import StartSignal, World, finish, world_from_env
from lookalike.paths import CONFIG_DIR
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import mask_urls
from lookalike.runtime.credentials import check_command_line
from lookalike.runtime.live_runs import start_run
from lookalike.runtime.quiet import silence_known_warnings
from lookalike.runtime.runs import check_run_folder, discard_run_directory, is_multirun, run_directory
from lookalike.runtime.tracking import (
    flat_params,
    log_params,
    log_publisher_input,
    resume_run_id,
    setup_experiment,
)
from lookalike.training import run_report
from lookalike.training.centroid_fit import fit_centroid
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.config import TrainConfig, train_config
from lookalike.training.holdout_eval import evaluate_holdout
from lookalike.training.inputs import Inputs, gather_inputs
from lookalike.training.label_rr_fit import fit_label_rr
from lookalike.training.loop import TrainResult, check_optimizer, train
from lookalike.training.model_rule import fits_seed_mean
from lookalike.training.private_tuning import check_affordable, plan_trials, tune
from lookalike.training.run_context import RunContext
from lookalike.training.seed_mean_fit import dp_sgd_instead, fit_seed_mean
from lookalike.training.sweep import PARENT_ENV

log = logging.getLogger("lookalike.train")


def run(cfg: TrainConfig | DictConfig) -> float | None:
    """One training run. Returns the held-out AUC (DP, or exact in trusted mode): what sweeps optimise.

    Under torchrun (WORLD_SIZE > 1) every rank prepares its share of the data, then rank 0 runs
    everything below and the other ranks only train on their share (parallel/world.py)."""
    silence_known_warnings()
    config = train_config(cfg)
    world = world_from_env(config.trainer.collective_timeout_minutes)
    if world is not None and config.label_rr:
        # Every rank refuses alike: one draw of the labels, on one process's rows.
        raise ConfigError("privacy.mechanism", "label_rr trains in one process: run it without torchrun")
    signal = StartSignal(world)
    try:
        if world is not None and not world.primary:
            _train_shard(config, world, signal)
            return None
        return _run(config, world, signal)
    except BaseException:
        signal.send(False)  # the other ranks stop instead of waiting for a training that will not come
        raise
    finally:
        if world is not None:
            finish()


def _train_shard(cfg: TrainConfig, world: World, signal: StartSignal) -> None:
    """A rank other than 0: no ledger, no MLflow, no evaluation; its shard's clipped gradients."""
    inputs = gather_inputs(cfg, world)
    go, examples = signal.wait()
    if not go:
        raise LookalikeError(f"rank {world.rank}: rank 0 stopped before training (its error says why)")
    # Rank 0 sent the DP estimate plus its planted canaries; the rule is off under the audit.
    model = inputs.build_model(cfg, inputs.model_config(cfg, examples))
    train(model, inputs.training_tensors(), cfg, delta=inputs.delta or 0.0, device=inputs.device, resume=inputs.resume, world=world, examples=examples)


def _run(cfg: TrainConfig, world: World | None, signal: StartSignal) -> float | None:
    check_optimizer(cfg)  # a bad optimizer setting fails before any work, not after the first DP step
    inputs = gather_inputs(cfg, world)
    inputs.check_model(cfg, distributed=world is not None)  # the model, its DP-SGD route and its optimizer, before anything is reserved
    signal.armed = True  # every rank has its data; the others now wait for go or stop
    ctx = RunContext(cfg, inputs.data, inputs.delta, Ledger(cfg.ledger.path))
    ctx.check_rules()  # the data owners' rules refuse a run before anything is reserved or logged
    tuned = cfg.tuning.mean_trials is not None
    if tuned:
        if world is not None:
            raise ConfigError("tuning.mean_trials", "private tuning runs in one process: run it without torchrun")
        check_affordable(cfg, inputs.delta or 0.0)
    if cfg.trusted_evaluation:
        log.warning("TRUSTED EVALUATION: seed-derived metrics are logged exactly; use only on synthetic or self-owned data")
    experiment_id = setup_experiment(cfg.mlflow)
    with ctx.reservation(inputs.resume):  # released on failure before training, kept charged after
        # The DP counts, and the owners' minimum seed size decided on them: charged from here on.
        ctx.release_counts()
        run_dir = run_directory(cfg)
        # A resumed run continues its MLflow run, so per-epoch epsilon reads as one curve.
        resumed_run_id = resume_run_id(inputs.resume)
        with start_run(  # first marks KILLED the runs whose process is gone (runtime/live_runs.py)
            run_id=resumed_run_id, experiment_id=None if resumed_run_id else experiment_id, run_name=None if resumed_run_id else run_report.run_name(ctx)
        ) as active:
            try:
                if resumed_run_id is None:
                    log_params(flat_params(cfg))
                    log_publisher_input(str(cfg.data.publisher_path), inputs.data.users.digest, inputs.data.spec)
                    if os.environ.get(PARENT_ENV):
                        mlflow.set_tag("mlflow.parentRunId", os.environ[PARENT_ENV])  # a sweep trial
                mlflow.set_tags(run_report.tags(ctx))
                mlflow.log_metrics(run_report.data_metrics(ctx))
                if tuned:
                    return _tune_and_log(cfg, ctx, inputs, active.info.run_id, run_dir)
                result = _fit(cfg, ctx, inputs, world, signal, active.info.run_id, run_dir)
                return _evaluate_and_log(cfg, ctx, inputs, result, active.info.run_id, run_dir)
            except BaseException:
                mlflow.set_tag("lookalike.status", "failed")
                raise


def _fit(cfg: TrainConfig, ctx: RunContext, inputs: Inputs, world: World | None, signal: StartSignal, run_id: str, run_dir: Path) -> TrainResult:
    """Charge the reservation, then train (or, for a kind that is not learned, release it once)."""

    def save(ckpt: Checkpoint) -> None:
        ckpt.meta = ctx.checkpoint_meta() | {"mlflow_run_id": run_id}
        ckpt.save(run_dir / "checkpoints" / "last.pt")

    estimate = ctx.estimate if model_kind(cfg.model.kind).learned else None
    examples = inputs.examples(estimate) if estimate is not None else None
    label_rr = ctx.mechanism == "label_rr"  # set or chosen on the DP counts (training/mechanism_rule.py)
    if not label_rr:
        inputs.data.population_features = None  # the rows kept for randomised response go now
    by_mean = ctx.mechanism == "dp_sgd" and cfg.model.small_seed_fit == "seed_mean"
    instead = dp_sgd_instead(world is not None, inputs.canaries is not None, inputs.resume is not None) if by_mean else None
    model_cfg = inputs.model_config(cfg, estimate, ctx.mechanism, by_mean=by_mean and not instead)
    model: Any = inputs.build_model(cfg, model_cfg)
    if inputs.resume is not None:
        inputs.resume.check_fits(model)
    if by_mean and fits_seed_mean(cfg.model, model_cfg):
        if instead:
            log.info("small-seed rule: model.small_seed_fit=seed_mean, but %s: the small model trains with DP-SGD", instead)
        else:
            ctx.use_mechanism("seed_mean")
    # The settings the run trained, after the small-seed and mechanism rules (functions of the DP counts).
    mlflow.log_params(run_report.model_rule_params(model_cfg) | {"privacy.mechanism_used": ctx.mechanism})
    # made-up users only: decided before the go, like check_model's
    grad_sample = None if label_rr else inputs.grad_sample_route(cfg, model)
    tensors = inputs.training_tensors(ctx.mechanism)
    # Nothing above read the data through a DP step, so a failure there releases the reservation
    # (less the DP counts already released); from the go to the other ranks on, it stays charged.
    ctx.begin_training()
    signal.send(True, examples or 0)  # the reservation holds: the other ranks start training with this one
    if not model_kind(cfg.model.kind).learned:
        result = fit_centroid(model, tensors, cfg, inputs.delta or 0.0)
    elif ctx.mechanism == "seed_mean":
        assert ctx.size is not None  # released before any private run fits
        seed_users = [ctx.size.matched[a] * (1 - cfg.data.holdout_fraction) for a in inputs.data.training.audiences]
        result = fit_seed_mean(model, tensors, cfg, inputs.delta or 0.0, seed_users, inputs.data.in_background_range)
    elif label_rr:
        result = fit_label_rr(model, tensors, cfg, device=inputs.device, save_checkpoint=save, on_epoch_end=_log_epoch)
    else:
        result = train(
            model,
            tensors,
            cfg,
            delta=inputs.delta or 0.0,
            device=inputs.device,
            resume=inputs.resume,
            save_checkpoint=save,
            on_epoch_end=_log_epoch,
            world=world,
            examples=examples,
            grad_sample=grad_sample,
        )
    ctx.trained(result)
    return result


def _log_epoch(epoch: int, metrics: dict) -> None:
    mlflow.log_metrics(metrics, step=epoch)


def _evaluate_and_log(cfg: TrainConfig, ctx: RunContext, inputs: Inputs, result: TrainResult, run_id: str, run_dir: Path) -> float:
    """The audit, the held-out metrics (a DP release unless trusted), the model and the spend."""
    delta, data, device = inputs.delta or 0.0, inputs.data, inputs.device
    if inputs.canaries is not None:
        run_report.log_audit(inputs.canaries.audit(result.model, device, delta), result)
    metric, ctx.eval_noise_multiplier = evaluate_holdout(result.model, data, device, cfg, ctx.eval_epsilon, ctx.eval_delta)
    run_report.save_and_record(ctx, inputs, result, run_id, run_dir)
    return metric


def _tune_and_log(cfg: TrainConfig, ctx: RunContext, inputs: Inputs, run_id: str, run_dir: Path) -> float:
    """Private tuning (training/private_tuning.py): one size estimate, a secret number of trials,
    and the best one evaluated and logged as this run; nothing about the others leaves here."""
    ctx.begin_training()
    estimate = ctx.estimate
    assert estimate is not None  # a tuned run is private and learned (TrainConfig._check_tuning)
    examples = inputs.examples(estimate)
    plan = plan_trials(cfg, examples, inputs.delta or 0.0)
    tuned = tune(cfg, inputs, estimate, examples, plan)
    ctx.trained(tuned.result)
    ctx.selection = plan
    mlflow.log_params(run_report.model_rule_params(tuned.model_config))
    log_params({f"tuning.chosen.{key}": "null" if value is None else value for key, value in tuned.settings.items()})
    log.info("private tuning: chose %s", ", ".join(f"{key}={value}" for key, value in tuned.settings.items()))
    metric, ctx.eval_noise_multiplier = evaluate_holdout(tuned.result.model, inputs.data, inputs.device, cfg, ctx.eval_epsilon, ctx.eval_delta)
    run_report.save_and_record(ctx, inputs, tuned.result, run_id, run_dir)
    return metric


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        check_run_folder(cfg)
        metric = run(cfg)
        if is_multirun() and (metric is None or math.isnan(metric)):
            # Too few held-out users for a DP estimate: Optuna's sweeper cannot take NaN, None
            # records the trial as failed.
            log.warning("held-out metric undefined (too few held-out users for the DP release); trial recorded as failed")
            return None
        return metric
    except LookalikeError as exc:
        # One line, no traceback; and no half-written run folder left behind.
        print(f"lookalike-train: error: {mask_urls(str(exc))}", file=sys.stderr)
        discard_run_directory()
        if is_multirun():
            # One refused trial must not kill the sweep. None (not NaN, which Optuna's sweeper
            # chokes on) makes the sweeper record the trial as failed and go on.
            return None
        sys.exit(2)


def cli() -> None:
    """Console entry point (``lookalike-train``)."""
    check_command_line("lookalike-train")  # before Hydra, whose parse errors echo an argument
    main()


if __name__ == "__main__":
    cli()
