"""Training throughput, DP vs non-private, in one process: examples per second of the product's
own training loop (``lookalike.training.loop.train``) on the demo's feature mix (16 numeric, device,
country, a 100k-value city vocabulary, multi-categorical interests), then the same with one more
categorical of 1,000,000 values.

    .venv/bin/python benchmarks/train_throughput.py               # ~12 min on 2 CPU cores
    .venv/bin/python benchmarks/train_throughput.py --routes nonprivate fused --repeats 1

Each route trains four epochs and the last three are timed (the first warms up), with the RDP
accountant so that epoch-end accounting costs milliseconds; routes run interleaved, ``--repeats``
times, and the median is reported with DP/non-private ratios. Writes
benchmarks/results/train_throughput_{device}.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from lookalike.data.demo import write_demo
from lookalike.data.features import CategoricalFeature
from lookalike.model.registry import build_model
from lookalike.runtime.quiet import silence_known_warnings
from lookalike.training.config import train_config
from lookalike.training.loop import train
from lookalike.training.prepare import prepare
from lookalike.training.train import CONFIG_DIR

RESULTS = Path(__file__).resolve().parent / "results"
EPOCHS = 4  # the first warms up; the other three are timed
ROUTES = {  # name -> privacy overrides
    "nonprivate": ["privacy.enabled=false"],
    "fused": ["privacy.grad_sample_mode=fused"],
    "opacus_hooks": ["privacy.grad_sample_mode=hooks"],
}


def config(data: Path, out: Path, batch: int, extra: list[str], device: str = "cpu"):
    overrides = [
        "experiment=demo",
        f"paths.output_dir={out}",
        f"data.publisher_path={data / 'publisher'}",
        f"data.seed_path={data / 'seed.jsonl'}",
        "trainer.progress_bar=false",
        f"trainer.device={device}",
        f"trainer.epochs={EPOCHS}",
        f"trainer.batch_size={batch}",
        f"trainer.physical_batch_size={4 * batch}",
        "privacy.accountant=rdp",
        "privacy.target_epsilon=3",
    ] + extra
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return train_config(compose(config_name="train", overrides=overrides))


def with_big_categorical(spec, tensors: list[torch.Tensor], size: int, seed: int = 0):
    """One more categorical column of ``size`` values, Zipf-distributed like real ids."""
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy((rng.zipf(1.2, tensors[0].shape[0]) % size + 2).astype(np.int64))
    big = CategoricalFeature("big_categorical", [f"v{i}" for i in range(size)])
    numeric, categorical, *rest = tensors
    return replace(spec, categorical=spec.categorical + [big]), [numeric, torch.cat([categorical, ids[:, None]], 1), *rest]


def examples_per_second(cfg, spec, audiences: int, tensors: list[torch.Tensor]) -> float:
    torch.manual_seed(0)
    model = build_model(spec, audiences, cfg.model)
    ends: list[float] = []
    device = torch.device(str(cfg.trainer.device))

    def epoch_end(epoch: int, metrics: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())

    train(model, tensors, cfg, delta=1e-6, device=device, on_epoch_end=epoch_end)
    return tensors[0].shape[0] * (len(ends) - 1) / (ends[-1] - ends[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=250_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (make gpu-check)")
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    parser.add_argument("--big-vocab", type=int, default=1_000_000, help="size of the extra categorical (0: skip that case)")
    parser.add_argument(
        "--big-routes",
        nargs="+",
        default=["nonprivate", "fused"],
        choices=list(ROUTES),
        help="routes for the big-vocabulary case (Opacus hooks builds [batch, vocab, dim] tensors there)",
    )
    args = parser.parse_args()
    silence_known_warnings()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "demo", Path(tmp) / "out"
        write_demo(data, args.users, seed=7)
        base = config(data, out, args.batch_size, [])
        prepared = prepare(base)
        spec, audiences = prepared.spec, len(prepared.training.audiences)
        tensors = prepared.train_features.tensors() + [torch.from_numpy(prepared.training.train_labels)]
        cases = [("reference", spec, tensors, args.routes)]
        if args.big_vocab:
            big_spec, big_inputs = with_big_categorical(spec, tensors[:-1], args.big_vocab)
            cases.append((f"+{args.big_vocab:,}-value categorical", big_spec, big_inputs + [tensors[-1]], args.big_routes))
        results = []
        for name, case_spec, case_tensors, routes in cases:
            timings: dict[str, list[float]] = {r: [] for r in routes}
            for _ in range(args.repeats):  # interleaved, so machine noise hits every route alike
                for route in routes:
                    extra = ROUTES[route] + (["trusted_evaluation=true"] if route == "nonprivate" else [])
                    cfg = config(data, out, args.batch_size, extra, args.device)
                    timings[route].append(examples_per_second(cfg, case_spec, audiences, case_tensors))
            medians = {r: statistics.median(v) for r, v in timings.items()}
            for route in routes:
                ratio = medians[route] / medians["nonprivate"] if "nonprivate" in medians else float("nan")
                results.append(
                    {
                        "case": name,
                        "route": route,
                        "examples_per_s": medians[route],
                        "ratio_to_nonprivate": ratio,
                        "runs": timings[route],
                        "training_examples": case_tensors[0].shape[0],
                    }
                )
    print(
        f"\ntraining throughput on {args.device}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{results[0]['training_examples']:,} training examples, median of {args.repeats}\n"
    )
    print("| case | route | DP / non-private | examples/s |\n| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['case']} | {r['route']} | {r['ratio_to_nonprivate']:.2f}x | {r['examples_per_s']:,.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_throughput_{args.device}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
