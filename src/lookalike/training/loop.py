"""The training loop: DP-SGD (Opacus, Poisson sampling, logical vs physical batches) or plain SGD.

Read top to bottom: build the loader, wrap it for DP, run epochs, checkpoint after each one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lookalike.data.tensor_batches import TensorBatches, keep_batch
from lookalike.errors import ConfigError, LookalikeError, one_line
from lookalike.parallel.world import World, broadcast_parameters
from lookalike.training.batch_rule import batch_plan
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.dp_sgd.engine import make_private
from lookalike.training.dp_sgd.route import GradSampleRoute, structural_route
from lookalike.training.table_route import SplitOptimizer, TableRoute, table_route

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: nn.Module  # the plain module (Opacus wrapper removed)
    steps: int
    epochs: int
    epsilon: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    history: list = field(default_factory=list)  # accountant history: (sigma, q, steps)
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    batch_size: int = 0  # the logical batch it ran at (trainer.batch_size or the batch rule's)
    table_route: str = "dense"  # how its big embedding tables trained (training/table_route.py)
    grad_sample_mode: str = "none"  # the per-example gradient route it took (dp_sgd/route.py); none: not private
    flip_probability: float | None = None  # privacy.mechanism=label_rr: each seed label's chance of being flipped


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE averaged over audiences: one number per user, independent of the batch."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)


def check_optimizer(cfg: Any, params: Any = None) -> None:
    """Build ``trainer.optimizer`` on ``params`` (a stand-in parameter by default): a bad argument
    or target is refused in one line before a run reserves anything, not after its first DP step."""
    try:
        instantiate(cfg.trainer.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))] if params is None else params)
    except Exception as exc:  # Hydra's instantiation errors (its target policy's too), the optimizer's own ValueErrors
        raise ConfigError("trainer.optimizer", f"cannot be built ({one_line(exc)}): fix its _target_ or arguments") from None


def train(
    model: nn.Module,
    tensors: list[torch.Tensor],
    cfg: Any,
    *,
    delta: float,
    device: torch.device,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    resume: Checkpoint | None = None,
    save_checkpoint: Callable[[Checkpoint], None] | None = None,
    world: World | None = None,
    examples: int | None = None,
    noise_multiplier: float | None = None,
    grad_sample: GradSampleRoute | None = None,
) -> TrainResult:
    """Train ``model`` on ``tensors`` (inputs..., labels last). DP when ``cfg.privacy.enabled``.

    ``examples`` is what the sample rate is one batch of: the run's DP estimate of the training
    examples over all ranks (run_context.py). None takes ``len(tensors[0])``, which is exact and
    seed-derived: for trusted callers (tests, benchmarks) only. ``noise_multiplier`` fixes the
    noise instead of calibrating it to ``privacy.target_epsilon`` (private tuning plans it).
    ``grad_sample`` is the per-example gradient route (training/tower_checks.py decides it for a
    run); None takes the one the model's layer types call for (dp_sgd/route.py)."""
    trainer, privacy = cfg.trainer, cfg.privacy
    model.to(device)
    if resume is not None:
        model.load_state_dict(resume.model_state)
    if world is not None:
        if not privacy.enabled:
            raise ConfigError("privacy.enabled", "false runs in one process only; torchrun training is for DP runs")
        broadcast_parameters(model)
    route = table_route(model, trainer.sparse_tables_from, trainer.optimizer.get("lr"), trainer.table_lr)
    grad_sample = grad_sample or structural_route(model, privacy.grad_sample_mode)
    if privacy.enabled and (grad_sample.mode != "fused" or world is not None):
        # Lazy noise needs the fused clipping's sparse sums, and one process (table_route.py).
        if route.tables:
            log.info("embedding tables of %s rows train dense: lazy noise runs with grad_sample_mode=fused in one process", route.sizes())
        route = TableRoute()
    optimizer: Any = instantiate(trainer.optimizer)(params=route.dense_parameters(model) if route.tables else model.parameters())
    if route.tables and not privacy.enabled:
        optimizer = SplitOptimizer(optimizer, route)
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer_state)
    # The training set is small next to any accelerator's memory: put it there once, not per batch.
    tensors = [t.to(device) for t in tensors]
    # A torchrun rank may hold no examples (fewer row groups than ranks): nothing to shuffle.
    examples = len(tensors[0]) if examples is None else int(examples)
    plan = batch_plan(cfg, examples, delta)
    batch_size, epochs = plan.batch, plan.epochs
    loader = DataLoader(TensorBatches(tensors), batch_size=batch_size, shuffle=len(tensors[0]) > 0, collate_fn=keep_batch)  # type: ignore[arg-type]  # batches are tuples of tensors, not lists

    private = None
    physical = grad_sample.physical_batch(trainer.physical_batch_size)
    if privacy.enabled:
        private = make_private(
            model,
            optimizer,
            loader,
            privacy,
            epochs=epochs,
            delta=delta,
            # A resume calibrates the noise again from its plan (the same numbers give the same
            # multiplier): the checkpoint's is a file the operator can edit.
            noise_multiplier=noise_multiplier,
            accountant_state=resume.accountant_state if resume else None,
            max_physical_batch=physical,
            world=world,
            examples=examples,
            tables=route if route.tables else None,
            grad_sample_mode=grad_sample.mode,
        )
        model, optimizer, loader = private.model, private.optimizer, private.loader
        log.info("DP-SGD: noise multiplier %.4f, sample rate %.5f, max grad norm %s", private.noise_multiplier, private.sample_rate, privacy.max_grad_norm)
        log.info("DP-SGD per-example gradients: %s; up to %d examples through the model at once", grad_sample.describe(), physical)

    start_epoch = resume.epoch if resume else 0
    steps = resume.steps if resume else 0
    losses = list(resume.losses) if resume else []
    show_loss = bool(cfg.trusted_evaluation) or not privacy.enabled
    epsilon = None
    for epoch in range(start_epoch, epochs):
        model.train()
        total, count = torch.zeros((), device=device), 0
        with _physical_batches(loader, optimizer, private, physical) as batches:
            # The bar counts logical steps (one per accountant step), not physical batches.
            # disable=None: a bar only on a terminal; a CI or Slurm log gets the epoch lines alone,
            # not thousands of carriage-return updates.
            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{epochs}", disable=None if trainer.progress_bar else True, leave=False)
            for batch in batches:
                *inputs, labels = (t.to(device, non_blocking=True) for t in batch)
                optimizer.zero_grad(set_to_none=True)
                logits = model(*inputs)
                example_loss = per_example_loss(logits, labels)
                if private is not None and private.clipping is not None:
                    private.clipping.backward(example_loss)  # clipped sum into p.grad; the optimizer noises it
                else:
                    # Sum / max(n, 1) is the mean, and stays finite on an empty Poisson batch.
                    (example_loss.sum() / max(labels.shape[0], 1)).backward()
                optimizer.step()
                stepped = private is None or not optimizer._is_last_step_skipped
                steps += int(stepped)
                bar.update(int(stepped))
                total += example_loss.detach().sum()
                count += labels.shape[0]
                postfix: dict[str, object] = {"step": steps}
                if epsilon is not None:
                    postfix["eps"] = f"{epsilon:.3f}"
                if show_loss:
                    postfix["loss"] = f"{example_loss.mean().item():.4f}" if labels.shape[0] else "-"
                bar.set_postfix(postfix, refresh=False)
            bar.close()
        lazy = private.clipping.lazy if private is not None and private.clipping is not None else None
        if lazy is not None and save_checkpoint is not None:
            lazy.flush()  # a checkpoint the operator can read owes nothing (dp_sgd/lazy_tables.py)
        losses.append(float(total) / max(count, 1))
        # A NaN or inf anywhere makes the sum non-finite (so does a sum past float range, which is
        # divergence too): one reduction per parameter, not a bool copy of a million-row table.
        if not math.isfinite(losses[-1]) or not all(bool(torch.isfinite(p.detach().sum())) for p in model.parameters()):
            # Nothing a non-finite model scores means anything; its reservation stays charged.
            raise LookalikeError(
                f"training diverged in epoch {epoch + 1}: the loss or a weight is NaN/inf; lower trainer.optimizer.lr (or check the data's numeric columns)"
            )
        if private is not None:
            epsilon = private.engine.get_epsilon(delta)
        metrics = {"steps": steps} | ({"epsilon": epsilon} if epsilon is not None else {})
        log.info("epoch %d/%d: steps %d%s", epoch + 1, epochs, steps, f", epsilon {epsilon:.4f}" if epsilon is not None else "")
        if on_epoch_end:
            on_epoch_end(epoch + 1, metrics | ({"train_loss": losses[-1]} if show_loss else {}))
        if save_checkpoint:
            # The exact loss on seed labels is seed-derived: a checkpoint the operator reads keeps
            # it only where the run may show it (trusted or non-private).
            save_checkpoint(Checkpoint.capture(epoch + 1, steps, losses if show_loss else [], model, optimizer, private))

    plain = private.plain_model if private is not None else model
    if private is not None and private.clipping is not None:
        private.clipping.detach()
        if private.clipping.lazy is not None:
            private.clipping.lazy.detach()
    if isinstance(optimizer, SplitOptimizer):
        optimizer.release()
    result = TrainResult(
        plain,
        steps,
        epochs,
        losses=losses,
        batch_size=batch_size,
        table_route=route.describe(privacy.enabled),
        grad_sample_mode=grad_sample.mode if privacy.enabled else "none",
    )
    if private is not None:
        result.epsilon = float(private.engine.get_epsilon(delta))
        result.noise_multiplier, result.sample_rate = private.noise_multiplier, private.sample_rate
        result.history = list(private.engine.accountant.history)
    return result


def _physical_batches(loader, optimizer, private, physical: int):
    """DP: split each Poisson-sampled logical batch into physical ones (BatchMemoryManager)."""
    if private is None or private.clipping is not None:  # fused mode: PoissonBatches splits itself
        return _Passthrough(loader)
    return BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical, optimizer=optimizer)


class _Passthrough:
    def __init__(self, loader):
        self.loader = loader

    def __enter__(self):
        return self.loader

    def __exit__(self, *exc):
        return False
