"""The fused DP-SGD path against Opacus' hooks path: the same accounting, comparable utility,
noise once per logical batch and Poisson batches at Opacus' rate."""

from __future__ import annotations

import math

import pytest
import torch

from lookalike.model.registry import build_model
from lookalike.privacy.accounting import epsilon_from_history
from lookalike.privacy.poisson_sampling import PoissonBatches
from lookalike.training.config import train_config
from lookalike.training.loop import train
from lookalike.training.prepare import prepare


def train_with(cfg, mode: str, extra_examples: int = 0):
    """``extra_examples``: what a DP size estimate is off by (the sample rate follows it)."""
    cfg = train_config(cfg)
    cfg.privacy.grad_sample_mode = mode
    data = prepare(cfg)
    torch.manual_seed(0)
    model = build_model(data.spec, 2, cfg.model)
    tensors = data.train_features.tensors() + [torch.from_numpy(data.training.train_labels)]
    return train(model, tensors, cfg, delta=1e-5, device=torch.device("cpu"), examples=data.n_train + extra_examples), data


def test_fused_and_hooks_account_alike_and_both_learn(cfg_factory, fixed_entropy):
    cfg = cfg_factory("privacy.target_epsilon=4.0", "trainer.epochs=4", "trainer.batch_size=64", "trainer.physical_batch_size=16")
    fused, data = train_with(cfg, "fused", extra_examples=150)
    hooks, _ = train_with(cfg, "hooks", extra_examples=150)
    # Same sampler rate, step count and calibrated noise: the accountant sees identical mechanisms,
    # at the rate of the size estimate (here 150 above the exact size), not of the exact size.
    assert fused.history == hooks.history and fused.steps == hooks.steps and fused.noise_multiplier == hooks.noise_multiplier
    assert fused.sample_rate == hooks.sample_rate == pytest.approx(1 / math.ceil((data.n_train + 150) / 64))
    assert fused.epsilon == pytest.approx(hooks.epsilon) and fused.epsilon <= 4.0
    assert fused.epsilon == pytest.approx(epsilon_from_history(fused.history, 1e-5, "prv"))
    # Both models rank the training seed above non-seed users (random ranking: 0.5).
    for result in (fused, hooks):
        with torch.no_grad():
            scores = result.model.eval()(*data.train_features.tensors())[:, 0]
        labels = torch.from_numpy(data.training.train_labels[:, 0]) > 0
        wins = (scores[labels].unsqueeze(1) > scores[~labels].unsqueeze(0)).float().mean()
        assert wins > 0.65


class Recorder:
    def __init__(self):
        self.signals: list[bool] = []

    def signal_skip_step(self, do_skip: bool) -> None:
        self.signals.append(do_skip)


def test_poisson_batches_split_logical_batches_and_keep_empty_steps():
    tensors = [torch.arange(10_000), torch.arange(10_000) * 2]
    recorder = Recorder()
    batches = PoissonBatches(tensors, sample_rate=0.01, max_physical_batch=30, optimizer=recorder, generator=torch.Generator().manual_seed(1))
    assert len(batches) == 100
    sizes, logical = [], []
    for rows, doubled in batches:
        assert torch.equal(doubled, rows * 2)
        sizes.append(rows.numel())
        if not recorder.signals[-1]:  # a logical batch ends here
            logical.append(sum(sizes))
            sizes = []
    assert len(logical) == 100 and max(s for s in logical) > 30  # some logical batches were split
    assert abs(sum(logical) / 100 - 100) < 10  # mean batch size q * N
    empty = PoissonBatches([torch.arange(5)], sample_rate=1e-9, max_physical_batch=4, optimizer=Recorder())
    empty.steps = 3
    assert [r[0].numel() for r in empty] == [0, 0, 0]  # every step happens, with nothing in it


def test_poisson_rows_include_every_row_independently_at_rate_q():
    """The geometric-gap sampler against the definition: size mean and variance of a binomial,
    every row (first and last included) at rate q."""
    from lookalike.privacy.poisson_sampling import poisson_rows

    n, q, draws = 2_000, 0.02, 4_000
    generator = torch.Generator().manual_seed(7)
    counts, sizes = torch.zeros(n), []
    for _ in range(draws):
        rows = poisson_rows(n, q, generator, torch.device("cpu"))
        assert rows.numel() == 0 or (rows.min() >= 0 and rows.max() < n and (rows.diff() > 0).all())
        counts[rows] += 1
        sizes.append(rows.numel())
    sizes = torch.tensor(sizes, dtype=torch.float64)
    assert abs(sizes.mean() - n * q) < 4 * (n * q * (1 - q) / draws) ** 0.5
    assert 0.85 < sizes.var() / (n * q * (1 - q)) < 1.15
    rate = counts / draws
    assert abs(rate.mean() - q) < 0.001 and rate[:5].mean() > 0.01 and rate[-5:].mean() > 0.01
    assert ((rate - q).abs() < 6 * (q * (1 - q) / draws) ** 0.5).float().mean() > 0.999


@pytest.mark.parametrize("mode", ["fused", "hooks"])
def test_dp_noise_and_sample_are_not_reproducible_from_the_seed(cfg_factory, mode):
    """Same config, same seed (same initial weights): the runs still differ, because the noise
    and the Poisson sample come from OS entropy (Opacus' hooks path would take both from the
    seeded global RNG); a non-private run with the same seed would be identical."""
    cfg = cfg_factory("privacy.target_epsilon=4.0", "trainer.epochs=1")
    first, _ = train_with(cfg, mode)
    second, _ = train_with(cfg, mode)
    assert first.history == second.history
    differ = [not torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values())]
    assert all(differ)


@pytest.mark.parametrize(("mode", "setting", "physical"), [("fused", None, 8192), ("hooks", None, 512), ("fused", 300, 300)])
def test_the_physical_batch_follows_the_route_unless_set(cfg_factory, mode, setting, physical):
    """Null: the fused route takes a logical batch whole (up to 8,192), Opacus' per-sample route
    512 at a time (it stores a gradient per example); a setting is taken as given."""
    cfg = train_config(cfg_factory("trainer.epochs=1", "trainer.batch_size=800", "privacy.target_epsilon=8.0"))
    cfg.trainer.physical_batch_size = setting
    cfg.privacy.grad_sample_mode = mode
    data = prepare(cfg)
    model = build_model(data.spec, 2, cfg.model)
    sizes: list[int] = []
    model.user_tower.register_forward_hook(lambda _m, inputs, _o: sizes.append(inputs[0].shape[0]))
    tensors = data.train_features.tensors() + [torch.from_numpy(data.training.train_labels)]
    result = train(model, tensors, cfg, delta=1e-5, device=torch.device("cpu"))
    # One logical batch of all 776 examples (q = 1): whole on the fused route, cut below 512 or
    # 300 otherwise (Opacus' BatchMemoryManager cuts into near-equal parts).
    assert result.steps == 1 and max(sizes) <= physical, sizes
    assert sizes == [776] if physical == 8192 else len(sizes) == -(-776 // physical), sizes
