"""Training throughput, DP vs non-private at equal batch, in one process: examples per second of
the product's own training loop (``lookalike.training.loop.train``) on the demo's feature mix (16
numeric, device, country, a city vocabulary, multi-categorical interests), then with one more
list column whose values come from 1,000,000 (sites visited), encoded once with a vocabulary
capped at 5,000 and once with all 1,000,000, and with one more 1,000,000-value categorical.

    .venv/bin/python benchmarks/train_throughput.py               # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/train_throughput.py --repeats 1 --users 100000
    .venv/bin/python benchmarks/train_throughput.py --extra trainer.sparse_tables_from=null   # every table dense

Every route trains at the same expected batch (``--batch-size``, 1,024): the batch rule gives DP
runs far larger batches, which would hide DP's per-step cost. Each route trains ``--epochs`` (8) and
all but the first are timed (it warms up), the per-epoch accounting included (PRV, the default);
each repeat runs every case and route once (the routes' order reversed every other repeat), and
there are ``--repeats`` of them. DP / non-private is the median over repeats of each repeat's own
ratio (its DP run against the non-private run beside it, so a machine that slows for a minute
slows both), with the min-max beside it; examples/s are medians, and the time per epoch at the 1M
vocabulary is the median over repeats of its ratio to the 5,000 one's in the same repeat. Writes
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
from lookalike.data.features import MISSING_INDEX, OOV_INDEX, CategoricalFeature, MultiCategoricalFeature
from lookalike.model.registry import build_model
from lookalike.runtime.quiet import silence_known_warnings
from lookalike.training.config import train_config
from lookalike.training.loop import train
from lookalike.training.prepare import prepare
from lookalike.training.train import CONFIG_DIR

RESULTS = Path(__file__).resolve().parent / "results"
MAX_LIST = 16  # values per user in the big list column
ROUTES = {  # name -> privacy overrides
    "nonprivate": ["privacy.enabled=false"],
    "fused": ["privacy.grad_sample_mode=fused"],
    "opacus_hooks": ["privacy.grad_sample_mode=hooks"],
}


def config(data: Path, out: Path, batch: int, extra: list[str], device: str = "cpu", epochs: int = 4):
    overrides = [
        "experiment=demo",
        f"paths.output_dir={out}",
        f"data.publisher_path={data / 'publisher'}",
        f"data.seed_path={data / 'seed.jsonl'}",
        "trainer.progress_bar=false",
        f"trainer.device={device}",
        f"trainer.epochs={epochs}",
        f"trainer.batch_size={batch}",
        f"trainer.physical_batch_size={4 * batch}",
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


def with_big_list(spec, tensors: list[torch.Tensor], values: int, vocabulary: int, seed: int = 0):
    """One more list column (sites visited, say): up to ``MAX_LIST`` values per user drawn from
    ``values`` distinct ones by a Zipf law, encoded with a vocabulary of the ``vocabulary`` most
    frequent (value rank i is the i-th most frequent; the rest are out of vocabulary), as
    ``data.vocab.max_size`` would cap it. The same users and draws for every vocabulary."""
    rng = np.random.default_rng(seed)
    n = tensors[0].shape[0]
    ranks = rng.zipf(1.05, (n, MAX_LIST)) % values
    ids = np.where(ranks < vocabulary, ranks + 2, OOV_INDEX)
    lengths = rng.integers(1, MAX_LIST + 1, n)
    ids[np.arange(MAX_LIST)[None, :] >= lengths[:, None]] = MISSING_INDEX
    feature = MultiCategoricalFeature("sites", [f"s{i}" for i in range(vocabulary)], max_length=MAX_LIST)
    return replace(spec, multi_categorical=spec.multi_categorical + [feature]), list(tensors) + [torch.from_numpy(ids)]


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
    parser.add_argument("--batch-size", type=int, default=1024, help="the expected logical batch of every route (equal batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="per run; the first warms up, the rest are timed (set-up costs far more than an epoch)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (make gpu-check)")
    parser.add_argument("--routes", nargs="+", default=["nonprivate", "fused"], choices=list(ROUTES))
    parser.add_argument("--big-vocab", type=int, default=1_000_000, help="distinct values of the big list and categorical columns (0: skip those cases)")
    parser.add_argument("--small-vocab", type=int, default=5_000, help="the capped vocabulary the big list column is compared against")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every route (e.g. trainer.sparse_tables_from=null)")
    args = parser.parse_args()
    silence_known_warnings()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "demo", Path(tmp) / "out"
        write_demo(data, args.users, seed=7)
        base = config(data, out, args.batch_size, [])
        prepared = prepare(base)
        spec, audiences = prepared.spec, len(prepared.training.audiences)
        inputs = prepared.train_features.tensors()
        labels = torch.from_numpy(prepared.training.train_labels)
        cases = [("reference", spec, inputs)]
        if args.big_vocab:
            for vocabulary in (args.small_vocab, args.big_vocab):
                list_spec, list_inputs = with_big_list(spec, inputs, args.big_vocab, vocabulary)
                cases.append((f"+list column, vocab {vocabulary:,}", list_spec, list_inputs))
            big_spec, big_inputs = with_big_categorical(spec, inputs, args.big_vocab)
            cases.append((f"+{args.big_vocab:,}-value categorical", big_spec, big_inputs))
        timings: dict[tuple[str, str], list[float]] = {(c[0], r): [] for c in cases for r in args.routes}
        # Each repeat runs every case and route once, so a machine that slows for a few minutes
        # slows all of them alike: the ratios below pair runs of the same repeat.
        for repeat in range(args.repeats):
            for name, case_spec, case_inputs in cases:
                # Every other repeat runs the routes in reverse order, so drift within a repeat
                # favours each route as often as the other.
                for route in args.routes if repeat % 2 == 0 else args.routes[::-1]:
                    extra = ROUTES[route] + (["trusted_evaluation=true"] if route == "nonprivate" else []) + list(args.extra)
                    cfg = config(data, out, args.batch_size, extra, args.device, args.epochs)
                    timings[(name, route)].append(examples_per_second(cfg, case_spec, audiences, case_inputs + [labels]))
    small, big = f"+list column, vocab {args.small_vocab:,}", f"+list column, vocab {args.big_vocab:,}"
    results = []
    for (name, route), runs in timings.items():
        paired = [a / b for a, b in zip(runs, timings[(name, args.routes[0])])]
        result = {"case": name, "route": route, "examples_per_s": statistics.median(runs), "runs": runs, "paired_ratios": paired}
        result["ratio_to_nonprivate"] = statistics.median(paired) if args.routes[0] == "nonprivate" else float("nan")
        # Time per epoch relative to the capped vocabulary: same users, list draws, batch and repeat.
        vocab = [s / b for s, b in zip(timings[(small, route)], runs)] if name == big else []
        result["epoch_time_vs_small_vocab"] = statistics.median(vocab) if vocab else None
        result["epoch_time_vs_small_vocab_per_repeat"] = vocab or None
        results.append(result)
    setup = f"batch {args.batch_size} in every route, {torch.get_num_threads()} threads, {len(labels):,} training examples"
    print(f"\ntraining throughput on {args.device}, {setup}, {args.epochs - 1} timed epochs per run, median of {args.repeats} repeats\n")
    head = f"| case | route | DP / non-private (min-max) | epoch time vs vocab {args.small_vocab:,} | examples/s |"
    print(head + "\n| --- | --- | --- | --- | --- |")
    for r in results:
        versus = f"{r['epoch_time_vs_small_vocab']:.2f}x" if r["epoch_time_vs_small_vocab"] is not None else ""
        spread = f"{r['ratio_to_nonprivate']:.2f}x ({min(r['paired_ratios']):.2f}-{max(r['paired_ratios']):.2f})"
        print(f"| {r['case']} | {r['route']} | {spread} | {versus} | {r['examples_per_s']:,.0f} |")
    RESULTS.mkdir(exist_ok=True)
    meta = {"batch_size": args.batch_size, "epochs": args.epochs}
    meta |= {"users": args.users, "training_examples": len(labels), "threads": torch.get_num_threads(), "extra": args.extra}
    (RESULTS / f"train_throughput_{args.device}.json").write_text(json.dumps({"setup": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
