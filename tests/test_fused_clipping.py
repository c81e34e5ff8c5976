"""Fused ghost clipping gives exactly the clipped sum of per-example gradients that a loop over
examples computes, for every layer kind the models use (bags with repeated ids included)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lookalike.data.features import CategoricalFeature, FeatureSpec, MultiCategoricalFeature, NumericFeature
from lookalike.errors import ConfigError
from lookalike.model.logistic import LogisticRegression
from lookalike.model.towers import ModelConfig, TwoTower
from lookalike.training.dp_sgd.fused_clipping import FusedClipping
from lookalike.training.loop import per_example_loss

SPEC = FeatureSpec(
    id_column="id",
    numeric=[NumericFeature(f"x{i}", 0.0, 1.0, False) for i in range(5)],
    categorical=[CategoricalFeature("c", [f"v{i}" for i in range(30)]), CategoricalFeature("d", ["a", "b", "c"])],
    multi_categorical=[MultiCategoricalFeature("m", [f"t{i}" for i in range(7)], max_length=6)],
)


def batch(n: int, gen: torch.Generator) -> list[torch.Tensor]:
    numeric = torch.randn(n, SPEC.numeric_width, generator=gen)
    categorical = torch.stack([torch.randint(0, 32, (n,), generator=gen), torch.randint(0, 5, (n,), generator=gen)], 1)
    multi = torch.randint(0, 9, (n, 6), generator=gen)  # a vocabulary of 9 in bags of 6: repeats, padding (0)
    labels = (torch.rand(n, 2, generator=gen) < 0.3).float()
    return [numeric, categorical, multi, labels]


def reference(model: nn.Module, tensors: list[torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    """One backward per example, clipped by its norm, summed: DP-SGD by definition."""
    *inputs, labels = tensors
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for b in range(labels.shape[0]):
        model.zero_grad(set_to_none=True)
        per_example_loss(model(*(t[b : b + 1] for t in inputs)), labels[b : b + 1]).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for name in total:
            total[name] += factor * grads[name]
    model.zero_grad(set_to_none=True)
    return total


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("clip", [0.05, 100.0])  # most examples clipped / none clipped
def test_matches_per_example_loop(similarity, clip):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model = TwoTower(SPEC, 2, ModelConfig(embedding_dim=4, hidden_dims=[8, 6], output_dim=5, similarity=similarity)).double()
    tensors = [t.double() if t.is_floating_point() else t for t in batch(24, gen)]
    expected = reference(model, tensors, clip)
    fused = FusedClipping(model, clip)
    *inputs, labels = tensors
    norms = fused.backward(per_example_loss(model(*inputs), labels))
    assert norms.shape == (24,) and (norms > 0).all()
    if clip == 0.05:
        assert (norms > clip).float().mean() > 0.9  # the clipping branch is really exercised
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_shared_table_ids_that_meet_count_as_one_row():
    """The shared categorical table's ids rise along each row (each column shifted into its own
    range), so its norm skips the pairwise products. A raw id past its column's range lands on a
    row of the next column: where two positions meet, their gradients add before squaring."""
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    model = TwoTower(SPEC, 2, ModelConfig(embedding_dim=4, hidden_dims=[8], output_dim=5)).double()
    tensors = [t.double() if t.is_floating_point() else t for t in batch(24, gen)]
    categorical = tensors[1].clone()
    categorical[::3, 0] = 32 + categorical[::3, 1]  # column c's offset is 0, column d's is 32
    tensors[1] = categorical
    expected = reference(model, tensors, 0.05)
    fused = FusedClipping(model, 0.05)
    *inputs, labels = tensors
    fused.backward(per_example_loss(model(*inputs), labels))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_two_physical_batches_add_up_and_logistic_model_is_covered():
    gen = torch.Generator().manual_seed(5)
    model = LogisticRegression(SPEC, 2).double()
    for table in list(model.categorical) + list(model.multi):
        nn.init.normal_(table.weight)
    tensors = [t.double() if t.is_floating_point() else t for t in batch(20, gen)]
    expected = reference(model, tensors, 0.3)
    fused = FusedClipping(model, 0.3)
    for part in (slice(0, 7), slice(7, 20)):
        *inputs, labels = (t[part] for t in tensors)
        fused.backward(per_example_loss(model(*inputs), labels))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_unsupported_layers_and_reuse_are_refused():
    with pytest.raises(ConfigError, match="LayerNorm"):
        FusedClipping(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), 1.0)
    layer = nn.Linear(3, 3)
    fused = FusedClipping(layer, 1.0)
    x = torch.randn(4, 3)
    with pytest.raises(ConfigError, match="once per forward"):
        fused.backward(layer(layer(x)).sum(1))
