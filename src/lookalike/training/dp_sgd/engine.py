"""DP-SGD set-up with Opacus: the privacy engine, its Poisson loader and noise generator, and the
sample rate re-pointed at the DP size estimate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn, optim
from torch.utils.data import DataLoader

from lookalike.errors import ConfigError
from lookalike.parallel.world import World
from lookalike.privacy.accountants import CachedPRVAccountant, create_accountant
from lookalike.privacy.accounting import calibrate_noise
from lookalike.privacy.mechanisms import entropy_generator
from lookalike.privacy.poisson_sampling import PoissonBatches
from lookalike.training.dp_sgd.fused_clipping import FusedClipping
from lookalike.training.dp_sgd.lazy_tables import LazyNoisyTables
from lookalike.training.dp_sgd.noisy_optimizer import (
    DistributedNoisySumOptimizer,
    NoisySumOptimizer,
)
from lookalike.training.table_route import TableRoute

log = logging.getLogger(__name__)


@dataclass
class PrivateTraining:
    """What make_private returned, plus the numbers every run must report."""

    engine: PrivacyEngine
    model: nn.Module
    optimizer: Any
    loader: DataLoader
    noise_multiplier: float
    sample_rate: float
    clipping: FusedClipping | None = None  # fused mode: call clipping.backward(example_loss)

    @property
    def plain_model(self) -> nn.Module:
        return getattr(self.model, "_module", self.model)


def make_private(
    model: nn.Module,
    optimizer: optim.Optimizer,
    loader: DataLoader,
    privacy: Any,
    *,
    epochs: int,
    delta: float,
    noise_multiplier: float | None = None,
    accountant_state: dict | None = None,
    max_physical_batch: int = 512,
    world: World | None = None,
    examples: int,
    tables: TableRoute | None = None,
    grad_sample_mode: str | None = None,
) -> PrivateTraining:
    """Wrap model, optimizer and loader for DP-SGD with Poisson sampling.

    A fresh run calibrates the noise so that the accountant's epsilon for the steps the Poisson
    loader will really take is at most ``privacy.target_epsilon``. (Opacus'
    make_private_with_epsilon calibrates for ``epochs / q`` steps within a tolerance, and its
    PRV estimate for the real step count was seen to land above the target: 3.015 for 3.0.)
    A resumed run passes the checkpoint's ``noise_multiplier`` and ``accountant_state`` so that
    accounting continues instead of restarting.

    ``examples`` is the training-set size the sample rate is a batch of: a DP estimate of it
    (the exact size is seed-derived, and q = batch / N or the averaging by q N would release it).
    Poisson sampling at any fixed q is accounted the same way, so the estimate's error moves the
    real batch size, never the guarantee.

    ``grad_sample_mode`` is the route the run takes (dp_sgd/route.py); None: ``privacy``'s.
    """
    mode = grad_sample_mode or privacy.grad_sample_mode
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError("model", f"not compatible with DP-SGD: {errors[0]}")
    engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=bool(privacy.secure_mode))
    # The same accountant, minus the work that repeats at every epoch end (privacy/accountants.py).
    engine.accountant = create_accountant(privacy.accountant)
    clipping = None
    # From here on Opacus' wrappers: a DPOptimizer (noise_multiplier) and a Poisson loader.
    dp_optimizer: Any = optimizer
    dp_loader: Any = loader
    if mode == "fused":
        model, dp_optimizer, dp_loader, clipping = _fused(
            engine, model, optimizer, loader, privacy, noise_multiplier, max_physical_batch, world, examples, tables
        )
    elif world is not None:
        raise ConfigError("privacy.grad_sample_mode", f"'{mode}' runs in one process only; torchrun training needs fused")
    else:
        # Opacus draws noise and the Poisson sample from the global RNG, which the logged seed
        # fixes, unless given generators: OS-entropy ones here, as in fused mode (secure_mode
        # brings its own).
        secure = bool(privacy.secure_mode)
        batch_size = int(loader.batch_size or 1)
        model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            max_grad_norm=float(privacy.max_grad_norm),
            noise_multiplier=1.0 if noise_multiplier is None else noise_multiplier,
            poisson_sampling=True,
            grad_sample_mode=mode,
            noise_generator=None if secure else entropy_generator(next(model.parameters()).device),
        )
        if not secure:
            dp_loader.batch_sampler.generator = entropy_generator(torch.device("cpu"))
        _sample_at(dp_loader, dp_optimizer, engine, math.ceil(examples / batch_size), examples)
    # Opacus' accountant hook records q = 1 / len(Poisson loader). Because the loader takes
    # int(1 / (1 / L)) steps per epoch, which float rounding can make L - 1, that q can sit a
    # little above the true sampling rate: conservative, and the rate the reported epsilon uses.
    sample_rate = 1.0 / len(dp_loader)
    if isinstance(engine.accountant, CachedPRVAccountant):
        # It answers the epochs before the last on the whole run's domain (privacy/accountants.py).
        engine.accountant.planned_steps = epochs * len(dp_loader)
    if noise_multiplier is None:
        # The optimizer reads noise_multiplier at every step, and so does the accountant hook.
        dp_optimizer.noise_multiplier = calibrate_noise(float(privacy.target_epsilon), delta, sample_rate, epochs * len(dp_loader), privacy.accountant)
    if accountant_state is not None:
        engine.accountant.load_state_dict(accountant_state)
    if clipping is not None and clipping.lazy is not None and tables is not None:
        clipping.lazy.lr = tables.dp_lr(float(dp_optimizer.noise_multiplier) * float(privacy.max_grad_norm), float(dp_optimizer.expected_batch_size))
        log.info("lazy-noise SGD on %d embedding table(s) of %s rows, lr %.4g", len(clipping.lazy.tables), tables.sizes(), clipping.lazy.lr)
    return PrivateTraining(engine, model, dp_optimizer, dp_loader, float(dp_optimizer.noise_multiplier), sample_rate, clipping)


def _fused(
    engine: PrivacyEngine,
    model: nn.Module,
    optimizer: optim.Optimizer,
    loader: Any,
    privacy: Any,
    noise_multiplier: float | None,
    max_physical_batch: int,
    world: World | None,
    examples: int,
    tables: TableRoute | None,
):
    """What ``engine.make_private`` sets up, with our fused clipping in place of Opacus' model
    wrapper: Poisson sampling at Opacus' rate and step count, Opacus' noise-adding optimizer for
    pre-clipped sums (the one its ghost mode uses, minus its per-step copies) and its accountant
    hook, with the same sample rate and expected batch size."""
    # Noise and sample from OS entropy, never from the configured seed (privacy/mechanisms.py).
    device = loader.dataset.tensors[0].device
    kind, extra = (NoisySumOptimizer, {}) if world is None else (DistributedNoisySumOptimizer, {"world": world})
    optimizer = kind(
        optimizer,
        noise_multiplier=1.0 if noise_multiplier is None else noise_multiplier,
        max_grad_norm=float(privacy.max_grad_norm),
        expected_batch_size=1,
        loss_reduction="mean",
        secure_mode=bool(privacy.secure_mode),
        generator=entropy_generator(device),
        **extra,
    )  # batch size set below
    # Sampled at 1 / len(loader), as DPDataLoader.from_data_loader does; accounted (and averaged)
    # at 1 / steps taken, as make_private does with that loader's length. Under torchrun the
    # loader holds this rank's examples: the length is that of a loader over all ranks'
    # ``examples``, and each rank samples its own at that global rate.
    global_length = math.ceil(examples / loader.batch_size)
    batches = PoissonBatches(loader.dataset.tensors, 1 / global_length, max_physical_batch, optimizer, entropy_generator(device))
    sample_rate = 1 / len(batches)
    optimizer.expected_batch_size = int(examples * sample_rate) / (world.size if world else 1)
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    lazy = None
    if tables is not None and tables.tables:
        # Under torchrun each rank reads other rows, so owed noise drawn at read time would
        # differ between replicas: the loop keeps tables dense there (training/table_route.py).
        assert world is None, "lazy-noise tables run in one process"
        lazy = LazyNoisyTables(tables.tables, 0.0, entropy_generator(device), bool(privacy.secure_mode))  # lr once the noise is known
        optimizer.tables = lazy
    return model, optimizer, batches, FusedClipping(model, float(privacy.max_grad_norm), lazy)


def _sample_at(loader: Any, optimizer: Any, engine: PrivacyEngine, steps: int, examples: int) -> None:
    """Make Opacus' Poisson loader sample at 1 / ``steps`` for ``steps`` steps an epoch, average
    over ``examples`` x rate, and account at that rate. ``engine.make_private`` derives all three
    from the exact dataset length, which is seed-derived."""
    rate = 1.0 / steps
    sampler = loader.batch_sampler
    sampler.sample_rate, sampler.steps = rate, steps
    loader.sample_rate = rate
    optimizer.expected_batch_size = int(examples * rate)
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=rate))
