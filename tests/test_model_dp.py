"""The Opacus traps from PRIVACY.md, tested: every parameter gets an exact per-sample gradient,
and the logical batch (BatchMemoryManager) equals one big batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from opacus import GradSampleModule

from lookalike.data.config import DataConfig, VocabConfig
from lookalike.data.encode import encode
from lookalike.data.feature_stats import fit_feature_spec
from lookalike.data.features import infer_feature_kinds
from lookalike.model.registry import build_model
from lookalike.model.towers import ModelConfig, TwoTower
from lookalike.training.loop import per_example_loss

DATA_CFG = DataConfig(id_column="user_id", vocab=VocabConfig(max_size=50, min_count=1), max_multi_length=4)


def batch(n: int = 12, audiences: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = pa.table(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "x": rng.normal(size=n),
            "y": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.2),
            "c": rng.choice(["a", "b", "c", "d"], n),
            "tags": pa.array([list(rng.choice(["p", "q", "r", "s", "t"], rng.integers(0, 6))) for _ in range(n)], type=pa.list_(pa.string())),
        }
    )
    spec = fit_feature_spec(t, infer_feature_kinds(t.schema, {"user_id"}), DATA_CFG, "p")
    labels = torch.from_numpy((rng.random((n, audiences)) < 0.4).astype(np.float32))
    return spec, encode(t, spec).tensors(), labels


@pytest.mark.parametrize(("kind", "similarity"), [("two_tower", "cosine"), ("two_tower", "dot"), ("logistic", "cosine")])
def test_every_trainable_parameter_gets_the_exact_per_sample_gradient(kind, similarity):
    torch.manual_seed(0)
    spec, inputs, labels = batch()
    model = build_model(spec, labels.shape[1], ModelConfig(embedding_dim=4, hidden_dims=[8], output_dim=6, similarity=similarity, kind=kind))
    if kind == "logistic":  # start away from zero so every gradient path is exercised
        for p in model.parameters():
            torch.nn.init.normal_(p)
    reference = {name: [] for name, _ in model.named_parameters()}
    for i in range(labels.shape[0]):  # autograd, one example at a time
        model.zero_grad()
        per_example_loss(model(*(t[i : i + 1] for t in inputs)), labels[i : i + 1]).sum().backward()
        for name, p in model.named_parameters():
            reference[name].append(p.grad.detach().clone())
    wrapped = GradSampleModule(model, loss_reduction="sum")
    wrapped.zero_grad()
    # sum reduction: the grad sample is then exactly each example's gradient
    per_example_loss(wrapped(*inputs), labels).sum().backward()
    params = list(model.named_parameters())
    assert params and all(p.requires_grad for _, p in params)
    for name, p in params:
        assert p.grad_sample is not None, f"{name} received no per-sample gradient"
        torch.testing.assert_close(p.grad_sample, torch.stack(reference[name]), rtol=1e-4, atol=1e-6, msg=name)


def test_logical_batch_split_into_physical_batches_equals_one_big_batch():
    """Opacus' equivalence test on our model: BatchMemoryManager changes memory, not the result."""
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch.utils.data import DataLoader

    from lookalike.data.tensor_batches import TensorBatches, keep_batch

    spec, inputs, labels = batch(n=64)
    weights = []
    for physical in (64, 16):
        torch.manual_seed(1)
        model = TwoTower(spec, labels.shape[1], ModelConfig(embedding_dim=4, hidden_dims=[8], output_dim=6))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = DataLoader(TensorBatches(inputs + [labels]), batch_size=64, collate_fn=keep_batch)
        engine = PrivacyEngine()
        # zero noise isolates the clipping/accumulation path; Poisson off for identical batches
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=0.0, max_grad_norm=0.5, poisson_sampling=False
        )
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical, optimizer=opt) as batches:
            for *x, y in batches:
                opt.zero_grad()
                (per_example_loss(model(*x), y).sum() / y.shape[0]).backward()
                opt.step()
        weights.append([p.detach().clone() for p in model.parameters()])
    for big, small in zip(*weights):
        torch.testing.assert_close(big, small, rtol=1e-5, atol=1e-6)
