"""Sharded data preparation: what each torchrun rank reads, how long it takes and the memory it
grows by, for 1 process against 2 gloo ranks, measured in one run.

    .venv/bin/python benchmarks/prepare_shards.py                 # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/prepare_shards.py --users 1000000

The demo data (real seed matches, 4 hive partitions of 2**16-row row groups) is written once;
every configuration runs in fresh spawned processes that call ``prepare`` exactly as
``lookalike-train`` does. Memory is each process's peak RSS growth during ``prepare`` (Linux:
the peak is reset through /proc/self/clear_refs, so the imports' baseline is left out). On a 2-core machine the 2 ranks
share the cores: the time ratio shows the work split, not a cluster's speed-up. Prints a
Markdown table and writes benchmarks/results/prepare_shards_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from lookalike.data.demo import write_demo
from lookalike.parallel.collective import Collective, GroupCollective
from lookalike.training.config import train_config
from lookalike.training.prepare import prepare
from lookalike.training.train import CONFIG_DIR

RESULTS = Path(__file__).resolve().parent / "results"


def _config(folder: Path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return train_config(
            compose(
                config_name="train",
                overrides=[
                    "experiment=demo",
                    f"paths.output_dir={folder / 'out'}",
                    f"data.publisher_path={folder / 'data' / 'publisher'}",
                    f"data.seed_path={folder / 'data' / 'seed.jsonl'}",
                ],
            )
        )


def _worker(rank: int, size: int, folder: Path) -> None:
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder / f'store{size}'}", rank=rank, world_size=size)
    cfg = _config(folder)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
    start = time.perf_counter()
    data = prepare(cfg, GroupCollective(rank, size) if size > 1 else Collective())
    seconds = time.perf_counter() - start
    grown = _status_kib("VmHWM") - before
    result = {
        "rank": rank,
        "seconds": seconds,
        "rss_growth_mib": grown / 1024,
        "train_examples_here": len(data.train_features),
        "train_examples_all": data.n_train,
        "rows_all": data.publisher_rows,
    }
    if size > 1:
        dist.destroy_process_group()
    (folder / f"result{size}_{rank}.pkl").write_bytes(pickle.dumps(result))


def _status_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def measure(folder: Path, size: int) -> list[dict]:
    mp.start_processes(_worker, args=(size, folder), nprocs=size, start_method="spawn")
    return [pickle.loads((folder / f"result{size}_{rank}.pkl").read_bytes()) for rank in range(size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_demo(folder / "data", args.users, seed=7)
        one, two = measure(folder, 1), measure(folder, 2)
    assert all(r["train_examples_all"] == one[0]["train_examples_all"] for r in two)
    print("| processes | rank | training examples held | prepare s | peak RSS growth MiB |\n| --- | --- | --- | --- | --- |")
    for processes, r in [(1, r) for r in one] + [(2, r) for r in two]:
        print(f"| {processes} | {r['rank']} | {r['train_examples_here']:,} of {r['train_examples_all']:,} | {r['seconds']:.1f} | {r['rss_growth_mib']:.0f} |")
    slowest = max(r["seconds"] for r in two) / one[0]["seconds"]
    largest = max(r["rss_growth_mib"] for r in two) / one[0]["rss_growth_mib"]
    print(f"\n2 ranks / 1 process ({args.users:,} users): slowest rank's time {slowest:.2f}x, largest rank's memory growth {largest:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prepare_shards_cpu.json").write_text(
        json.dumps({"users": args.users, "one_process": one, "two_ranks": two, "time_ratio": slowest, "memory_ratio": largest}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
