"""A DP run's own batch through the fused clipping whole or cut into physical batches: the
product's loop (``lookalike.training.loop.train``) on the demo's mix at the logical batches the
batch rule gives DP runs (hundreds to thousands), each physical size timed in the same process,
interleaved, median of ``--repeats`` runs, the first epoch of each run a warm-up.

    .venv/bin/python benchmarks/physical_batch.py                        # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/physical_batch.py --batches 2800 --physical 512 8192

``trainer.physical_batch_size`` null takes 8,192 on the fused route (dp_sgd/route.py); 512 was
the default for every route before.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from dp_step_cost import loop_epochs
from train_throughput import config

from lookalike.data.demo import write_demo
from lookalike.runtime.quiet import silence_known_warnings
from lookalike.training.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=250_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, 2800], help="logical (expected) batch sizes")
    parser.add_argument("--physical", type=int, nargs="+", default=[512, 2048, 8192], help="physical batch sizes; the first is the baseline")
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first warms up")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    silence_known_warnings()
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "demo", Path(tmp) / "out"
        write_demo(data, args.users, seed=7)

        def cfg(batch: int, physical: int):
            c = config(data, out, batch, ["privacy.grad_sample_mode=fused", f"trainer.epochs={args.epochs}"])
            c.trainer.physical_batch_size = physical
            return c

        prepared = prepare(cfg(args.batches[0], args.physical[0]))
        spec, audiences = prepared.spec, len(prepared.training.audiences)
        tensors = prepared.train_features.tensors() + [torch.from_numpy(prepared.training.train_labels)]
        n = tensors[0].shape[0]
        rates: dict[tuple[int, int], list[float]] = {}
        for _ in range(args.repeats):
            for batch in args.batches:
                for physical in args.physical:  # interleaved: machine noise hits every size alike
                    epochs = loop_epochs(cfg(batch, physical), spec, audiences, tensors)
                    rates.setdefault((batch, physical), []).append(n * len(epochs) / sum(epochs))
    print(f"\nDP (fused) on cpu, {torch.get_num_threads()} threads: {n:,} training examples, {args.epochs - 1} timed epochs, median of {args.repeats} runs\n")
    print("| logical batch | physical batch | examples/s | vs physical " + f"{args.physical[0]} |\n| --- | --- | --- | --- |")
    for batch in args.batches:
        base = statistics.median(rates[(batch, args.physical[0])])
        for physical in args.physical:
            rate = statistics.median(rates[(batch, physical)])
            print(f"| {batch:,} | {physical:,} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
