"""Big embedding tables train sparsely in both routes, and a run says which route it took."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lookalike.model.registry import build_model
from lookalike.training.config import train_config
from lookalike.training.loop import train
from lookalike.training.prepare import prepare
from lookalike.training.row_adam import RowAdam


def fit(cfg, resume=None, checkpoints: list | None = None):
    cfg = train_config(cfg)
    data = prepare(cfg)
    torch.manual_seed(0)
    model = build_model(data.spec, 2, cfg.model)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    tensors = data.train_features.tensors() + [torch.from_numpy(data.training.train_labels)]
    save = checkpoints.append if checkpoints is not None else None
    result = train(model, tensors, cfg, delta=1e-5, device=torch.device("cpu"), examples=data.n_train, resume=resume, save_checkpoint=save)
    return result, data, start


def ranks_seed_first(result, data) -> float:
    with torch.no_grad():
        scores = result.model.eval()(*data.train_features.tensors())[:, 0]
    labels = torch.from_numpy(data.training.train_labels[:, 0]) > 0
    return float((scores[labels].unsqueeze(1) > scores[~labels].unsqueeze(0)).float().mean())


def tables(model: nn.Module) -> dict[str, nn.Embedding]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}


def test_dp_tables_take_lazy_noise_every_row_noised_and_the_model_learns(cfg_factory, fixed_entropy):
    cfg = cfg_factory("privacy.target_epsilon=4.0", "trainer.epochs=4", "trainer.batch_size=64", "trainer.sparse_tables_from=1")
    checkpoints: list = []
    result, data, start = fit(cfg, checkpoints=checkpoints)
    big = tables(result.model)
    assert result.table_route == f"lazy-noise SGD on {len(big)} table(s) of {' + '.join(f'{t.num_embeddings:,}' for t in big.values())} rows"
    for name, table in big.items():
        # Every row drew its noise, read or not (the flush before the model is returned), and no
        # hook is left on the returned model.
        assert (table.weight.detach() != start[f"{name}.weight"]).any(1).all(), name
        assert not table._forward_pre_hooks and not table.sparse
        # So does every checkpoint: between flushes a touched row holds its gradient without
        # that step's noise, which must never reach a file the operator reads.
        assert (checkpoints[0].model_state[f"{name}.weight"] != start[f"{name}.weight"]).any(1).all(), name
    assert ranks_seed_first(result, data) > 0.6
    # A resume from a checkpoint (written after a flush: nothing owed) takes the same route on.
    resumed, _, _ = fit(cfg, resume=checkpoints[1])
    assert resumed.table_route == result.table_route and resumed.steps == result.steps
    assert resumed.epsilon == pytest.approx(result.epsilon) and all(bool(torch.isfinite(p).all()) for p in resumed.model.parameters())


def test_small_tables_stay_dense_and_hooks_mode_never_goes_lazy(cfg_factory):
    dense, _, _ = fit(cfg_factory("privacy.target_epsilon=4.0", "trainer.epochs=1", "trainer.batch_size=64"))
    assert dense.table_route == "dense"
    small = ("privacy.target_epsilon=4.0", "trainer.epochs=1", "trainer.batch_size=64")
    hooks_cfg = cfg_factory(*small, "trainer.sparse_tables_from=1", "privacy.grad_sample_mode=hooks")
    hooks, _, _ = fit(hooks_cfg)
    assert hooks.table_route == "dense"


def test_nonprivate_tables_take_row_wise_adam_and_resume(cfg_factory):
    cfg = cfg_factory("privacy.enabled=false", "trusted_evaluation=true", "trainer.epochs=3", "trainer.sparse_tables_from=1")
    checkpoints: list = []
    result, data, _ = fit(cfg, checkpoints=checkpoints)
    assert result.table_route.startswith("row-wise Adam on ")
    assert all(not t.sparse for t in tables(result.model).values())  # a plain model again
    assert ranks_seed_first(result, data) > 0.7
    # The checkpoint holds both optimizers' state; a resume from epoch 1 runs the last two epochs.
    first = checkpoints[0]
    assert set(first.optimizer_state) == {"dense", "tables"} and first.optimizer_state["tables"]["state"]
    resumed, _, _ = fit(cfg, resume=first)
    assert resumed.steps == result.steps and len(resumed.losses) == 3
    assert resumed.losses[1:] == pytest.approx(result.losses[1:], rel=0.05)


def test_row_adam_is_sparse_adams_update():
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(50, 4, generator=generator)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    row_adam, sparse_adam = RowAdam([ours], lr=0.01), torch.optim.SparseAdam([theirs], lr=0.01)
    for _ in range(6):
        ids = torch.randint(0, 50, (30,), generator=generator)  # repeats: summed, as a sparse gradient is
        values = torch.randn(30, 4, generator=generator)
        for param, optimizer in ((ours, row_adam), (theirs, sparse_adam)):
            param.grad = torch.sparse_coo_tensor(ids[None], values, (50, 4))
            optimizer.step()
    assert torch.allclose(ours, theirs, atol=1e-6) and not torch.equal(ours.detach(), start)


def test_row_adam_step_allocates_for_the_rows_it_touches_only():
    """A step costs the rows it touches: after the first (which makes the table's moments and
    scratch once), no step builds anything as long as the table."""
    from torch.utils._python_dispatch import TorchDispatchMode

    rows = 100_000
    table = nn.Parameter(torch.zeros(rows, 4))
    optimizer = RowAdam([table], lr=0.01)
    sizes: list[int] = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and func._schema.name in ("aten::zeros", "aten::empty", "aten::zeros_like", "aten::empty_like", "aten::new_zeros"):
                sizes.append(out.shape[0] if out.dim() else 1)
            return out

    for step in range(3):
        table.grad = torch.sparse_coo_tensor(torch.tensor([[3, 7, 3]]), torch.ones(3, 4), (rows, 4))
        if step == 0:
            optimizer.step()
            continue
        with Allocations():
            optimizer.step()
    assert sizes and max(sizes) < rows, sizes
