"""The fixed cost of a DP-SGD step: DP (fused) vs non-private at EQUAL batch on the demo's feature mix,
the product's own loop with its epoch-end accounting, then where a step's time goes.

    .venv/bin/python benchmarks/dp_step_cost.py                      # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/dp_step_cost.py --users 400000 --epochs 10

Loop: ``lookalike.training.loop.train`` per route, interleaved, ``--repeats`` times; each run's
first epoch warms up and the rest are timed end to end, ``private.engine.get_epsilon(delta)``
at every epoch end included (the default PRV accountant: a user waits for it too). The noise is
calibrated before the first epoch and is not timed (once per run, whatever its length).

Breakdown: the same steps taken by hand with a timer around each part, routes interleaved step by
step: sampling (the next batch), forward + backward (the forward pass and autograd's backward,
``autograd.grad`` in fused mode), clipping arithmetic (the rest of ``FusedClipping.backward``), noise
(``add_noise``), optimizer step (the rest of ``optimizer.step``: Adam, the wrapper) and epsilon (one
``get_epsilon`` per epoch, spread over its steps). Medians per step, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from train_throughput import config

from lookalike.data.demo import write_demo
from lookalike.data.tensor_batches import TensorBatches, keep_batch
from lookalike.model.registry import build_model
from lookalike.runtime.quiet import silence_known_warnings
from lookalike.training.dp_sgd.engine import make_private
from lookalike.training.loop import per_example_loss, train
from lookalike.training.prepare import prepare

DELTA = 1e-6
ROUTES = {"nonprivate": ["privacy.enabled=false", "trusted_evaluation=true"], "fused": ["privacy.grad_sample_mode=fused"]}
PARTS = ("sampling", "forward+backward", "clipping", "noise", "optimizer", "epsilon")


def loop_epochs(cfg, spec, audiences: int, tensors: list[torch.Tensor]) -> list[float]:
    """Seconds of each epoch after the first (epoch-end accounting included)."""
    torch.manual_seed(0)
    ends: list[float] = []
    model = build_model(spec, audiences, cfg.model)
    train(model, tensors, cfg, delta=DELTA, device=torch.device("cpu"), on_epoch_end=lambda *_: ends.append(time.perf_counter()))
    return [b - a for a, b in zip(ends, ends[1:])]


class Clock:
    """Wall time per named part of the current step; ``inner`` parts are subtracted from their outer one."""

    def __init__(self):
        self.step: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, part: str, outer: str | None = None):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            spent = time.perf_counter() - start
            self.step[part] += spent
            if outer is not None:
                self.step[outer] -= spent
            return result

        setattr(owner, name, timed)
        return original


def breakdown(cfg_by_route: dict, spec, audiences: int, tensors: list[torch.Tensor], steps: int) -> dict[str, dict[str, float]]:
    """Median ms per part over ``steps`` steps of each route, the routes' steps interleaved."""
    clock = Clock()
    runs = {}
    for route, cfg in cfg_by_route.items():
        torch.manual_seed(0)
        model = build_model(spec, audiences, cfg.model)
        optimizer = instantiate(cfg.trainer.optimizer)(params=model.parameters())
        # The loop's own loader: a gather per column, batches kept as tensors.
        loader = DataLoader(TensorBatches(tensors), batch_size=int(cfg.trainer.batch_size), shuffle=True, collate_fn=keep_batch)  # type: ignore[arg-type]
        private = None
        if cfg.privacy.enabled:
            private = make_private(
                model, optimizer, loader, cfg.privacy, epochs=10, delta=DELTA, max_physical_batch=int(cfg.trainer.physical_batch_size), examples=len(tensors[0])
            )
            model, optimizer, loader = private.model, private.optimizer, private.loader
            clock.wrap(optimizer, "add_noise", "noise", outer="optimizer")
        runs[route] = (model, optimizer, loader, private, len(loader))
    real_grad = clock.wrap(torch.autograd, "grad", "forward+backward", outer="clipping")
    samples: dict[str, dict[str, list[float]]] = {r: defaultdict(list) for r in runs}
    iterators = {r: iter(run[2]) for r, run in runs.items()}
    try:
        for i in range(steps + 5):  # the first five warm up
            for route, (model, optimizer, loader, private, per_epoch) in runs.items():
                clock.step.clear()
                start = time.perf_counter()
                try:
                    inputs = next(iterators[route])
                except StopIteration:
                    iterators[route] = iter(loader)
                    inputs = next(iterators[route])
                *inputs, labels = inputs
                clock.step["sampling"] += time.perf_counter() - start
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                example_loss = per_example_loss(model(*inputs), labels)
                if private is not None:
                    clock.step["forward+backward"] += time.perf_counter() - start
                    start = time.perf_counter()
                    private.clipping.backward(example_loss)
                    clock.step["clipping"] += time.perf_counter() - start
                else:
                    (example_loss.sum() / max(labels.shape[0], 1)).backward()
                    clock.step["forward+backward"] += time.perf_counter() - start
                start = time.perf_counter()
                optimizer.step()
                clock.step["optimizer"] += time.perf_counter() - start
                if private is not None and i % 5 == 0:  # an epoch's get_epsilon, shared by its steps
                    start = time.perf_counter()
                    private.engine.get_epsilon(DELTA)
                    clock.step["epsilon"] += (time.perf_counter() - start) / per_epoch * 5
                if i >= 5:
                    for part in PARTS:
                        samples[route][part].append(clock.step.get(part, 0.0) * 1e3)
    finally:
        torch.autograd.grad = real_grad
    return {r: {p: statistics.median(v[p]) if p != "epsilon" else statistics.mean(v[p]) for p in PARTS} for r, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=250_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=6, help="per loop run; the first warms up")
    parser.add_argument("--repeats", type=int, default=3, help="loop runs per route (0: the breakdown alone)")
    parser.add_argument("--steps", type=int, default=150, help="steps per route in the breakdown")
    parser.add_argument("--accountant", default="prv", choices=["prv", "rdp"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()
    silence_known_warnings()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "demo", Path(tmp) / "out"
        write_demo(data, args.users, seed=7)

        def cfg(route: str):
            extra = ROUTES[route] + [f"trainer.epochs={args.epochs}", f"privacy.accountant={args.accountant}"]
            return config(data, out, args.batch_size, extra)

        prepared = prepare(cfg("nonprivate"))
        spec, audiences = prepared.spec, len(prepared.training.audiences)
        tensors = prepared.train_features.tensors() + [torch.from_numpy(prepared.training.train_labels)]
        epochs: dict[str, list[list[float]]] = {r: [] for r in ROUTES}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both routes alike
            for route in ROUTES:
                epochs[route].append(loop_epochs(cfg(route), spec, audiences, tensors))
        parts = breakdown({r: cfg(r) for r in ROUTES}, spec, audiences, tensors, args.steps)
    n = tensors[0].shape[0]
    print(
        f"\nDP step cost on cpu, {torch.get_num_threads()} threads: {args.users:,} users, {n:,} training examples, batch {args.batch_size} "
        f"in both routes, {args.accountant} accountant, {args.epochs - 1} timed epochs per run, {args.repeats} runs per route\n"
    )
    if args.repeats:
        # The median run (of examples/s over its timed epochs), and the median single epoch: the
        # second shrugs off a run that another process slowed for a moment.
        runs = {r: [n * len(e) / sum(e) for e in v] for r, v in epochs.items()}
        by_run = {r: statistics.median(v) for r, v in runs.items()}
        by_epoch = {r: n / statistics.median([s for e in v for s in e]) for r, v in epochs.items()}
        print("| route | DP / non-private (median run) | examples/s | DP / non-private (median epoch) | examples/s | runs |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in ROUTES:
            row = f"{by_run[r] / by_run['nonprivate']:.2f}x | {by_run[r]:,.0f} | {by_epoch[r] / by_epoch['nonprivate']:.2f}x | {by_epoch[r]:,.0f}"
            print(f"| {r} | {row} | {', '.join(f'{x:,.0f}' for x in runs[r])} |")
    print(f"\nper step, ms (median of {args.steps} steps; epsilon: one get_epsilon per epoch over its steps)\n")
    print("| part | " + " | ".join(ROUTES) + " |\n| --- |" + " --- |" * len(ROUTES))
    for part in PARTS + ("total",):
        print(f"| {part} | " + " | ".join(f"{sum(parts[r].values()) if part == 'total' else parts[r][part]:.3f}" for r in ROUTES) + " |")
    total = {r: sum(parts[r].values()) for r in ROUTES}
    print(f"\nDP / non-private from the step totals: {total['nonprivate'] / total['fused']:.2f}x")


if __name__ == "__main__":
    main()
