"""Training's memory against the publisher table's size: wall time and peak RSS of
`lookalike-train` (DP, the demo's default negative rate) on 1M and 10M synthetic publisher users,
each run a fresh process.

    .venv/bin/python benchmarks/train_memory.py                       # 1M and 10M, ~10 min on 2 cores
    .venv/bin/python benchmarks/train_memory.py --sizes 1000000 2000000

The tables are export_scaling.py's (the demo's columns, random values, 1M rows per file); the
seed is the demo's seed file shape, 2 audiences of 1% of the users each. Training is one epoch of
the demo's model: what grows with the table is reading and preparing it, which is what this
measures. Peak RSS is the training process's own (``wait4`` rusage). Prints a Markdown table with
the growth relative to the smallest size and writes benchmarks/results/train_memory_{device}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_scaling import measured_process, owner_budget, write_population  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"


def write_seed(path: Path, users: int, share: float = 0.01) -> None:
    """Two audiences of ``share`` of the users each (ids as export_scaling's demo_like writes them)."""
    rng = np.random.default_rng(users + 1)
    with path.open("w") as f:
        for audience in ("luxury", "travel"):
            for i in rng.choice(users, int(users * share), replace=False):
                f.write(json.dumps({"user_id": f"u{i:07d}", "audience": audience}) + "\n")


def train(publisher: Path, seed: Path, out: Path, device: str) -> dict:
    owner_budget(out / "privacy_ledger.sqlite", publisher)
    args = [
        "experiment=demo",
        f"paths.output_dir={out}",
        f"data.publisher_path={publisher}",
        f"data.seed_path={seed}",
        "trainer.progress_bar=false",
        "trainer.epochs=1",
        f"trainer.device={device}",
    ]
    return measured_process(TRAIN, args, f"training on {publisher}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where training runs")
    parser.add_argument("--label", default="", help="appended to the results file's name (e.g. before)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for users in args.sizes:
            publisher, seed = root / f"population_{users}", root / f"seed_{users}.jsonl"
            write_population(publisher, users)
            write_seed(seed, users)
            result = train(publisher, seed, root / f"out_{users}", args.device)
            rows.append({"users": users} | result)
            print(f"{users:,} users: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
            for file in publisher.iterdir():
                file.unlink()  # keep at most one population on disk
    base = rows[0]
    print(f"\nlookalike-train on {args.device} (DP, one epoch, demo settings), {os.cpu_count()} CPU cores\n")
    print("| users | wall s | peak RSS GiB | time vs smallest | peak RSS vs smallest |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        growth = f"{r['wall_s'] / base['wall_s']:.2f}x | {r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x"
        print(f"| {r['users']:,} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {growth} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_memory_{args.device}{'_' + args.label if args.label else ''}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
