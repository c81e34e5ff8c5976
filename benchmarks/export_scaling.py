"""Export at scale: wall time, users/s and peak RSS of `lookalike-export` on 1M, 2M, 5M and 10M
synthetic publisher users (the demo's schema), each export a fresh process.

    .venv/bin/python benchmarks/export_scaling.py                  # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/export_scaling.py --sizes 1000000 --bins 1 5 10 20

A model is trained once on 250,000 demo users (DP, one epoch); the large tables are generated
vectorised, 1M rows per Parquet file, with the same columns and types as the demo data (their
values are random: this measures cost, not quality). Peak RSS is the exporting process's own
(``wait4`` rusage). Prints a Markdown table with time and memory relative to the smallest size
and writes benchmarks/results/export_scaling_{device}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hydra import compose, initialize_config_dir

from lookalike.cli.budget import main as budget_main
from lookalike.data.demo import COHORTS, COUNTRIES, DEVICES, N_CITIES, N_TOPICS, write_demo
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import CONFIG_DIR, run

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 1_000_000
EXPORT = "import sys; from lookalike.export.app import cli; sys.argv = ['lookalike-export', *sys.argv[1:]]; cli()"


def demo_like(start: int, n: int, rng: np.random.Generator) -> pa.Table:
    """``n`` users with the demo's columns (ids u{start}..), no Python loop over rows."""
    ids = pa.array(np.char.add("u", np.char.zfill(np.arange(start, start + n).astype(str), 7)))
    columns = {
        "user_id": ids,
        "age": rng.integers(18, 80, n).astype(np.float64),
        "income_k": rng.lognormal(3.8, 0.5, n),
        "sessions_30d": rng.poisson(12, n).astype(np.float64),
    }
    columns |= {f"signal_{j:02d}": rng.normal(0, 1, n) for j in range(13)}

    def pick(values: list[str], idx: np.ndarray) -> pa.Array:
        return pa.array(values).take(pa.array(idx))

    columns |= {
        "device": pick(DEVICES, rng.integers(0, len(DEVICES), n)),
        "country": pick(COUNTRIES, rng.zipf(1.6, n) % len(COUNTRIES)),
        "city": pick([f"city_{i}" for i in range(N_CITIES)], rng.zipf(1.3, n) % N_CITIES),
    }
    lengths = rng.integers(1, 7, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    topics = pick([f"topic_{t}" for t in range(N_TOPICS)], rng.integers(0, N_TOPICS, int(offsets[-1])))
    columns["interests"] = pa.ListArray.from_arrays(pa.array(offsets), topics)
    columns["cohort"] = pick(COHORTS, rng.integers(0, len(COHORTS), n))
    return pa.table(columns)


def write_population(folder: Path, users: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(users)
    for part, start in enumerate(range(0, users, CHUNK)):
        pq.write_table(demo_like(start, min(CHUNK, users - start), rng), folder / f"part-{part:03d}.parquet", row_group_size=1 << 16)


def owner_budget(ledger: Path, publisher: Path) -> None:
    """The data owners' budget for a table: created for the first, the others attached to it
    (they share users: each size's users start at the same ids)."""
    flags = ["--epsilon", "1000", "--if-missing", "--allow-trusted-evaluation", "--allow-non-private"]
    try:
        budget_main(["--ledger", str(ledger), "create", "--publisher", str(publisher), *flags])
    except SystemExit:
        budget_main(["--ledger", str(ledger), "attach", Ledger(ledger).status()[0].fingerprint, "--publisher", str(publisher)])


def train_model(data: Path, out: Path, device: str) -> None:
    owner_budget(out / "privacy_ledger.sqlite", data / "publisher")
    overrides = [
        "experiment=demo",
        f"paths.output_dir={out}",
        f"data.publisher_path={data / 'publisher'}",
        f"data.seed_path={data / 'seed.jsonl'}",
        "trainer.progress_bar=false",
        "trainer.epochs=1",
        f"trainer.device={device}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        run(compose(config_name="train", overrides=overrides))


def export(publisher: Path, seed: Path, out: Path, bins: list[str], kind: str, device: str) -> dict:
    owner_budget(out / "privacy_ledger.sqlite", publisher)
    args = [
        "experiment=demo",
        f"export.device={device}",
        "trusted_evaluation=false",
        "export.model=latest",
        "export.overwrite=true",
        f"paths.output_dir={out}",
        f"data.publisher_path={publisher}",
        f"data.seed_path={seed}",
        f"export.audience_size.type={kind}",
        f"export.audience_size.bins=[{','.join(bins)}]",
        f"export.output_dir={out / 'segments' / publisher.name}",
    ]
    return measured_process(EXPORT, args, f"export of {publisher}")


def measured_process(code: str, args: list[str], what: str) -> dict:
    """Run ``python -c code args`` as a fresh process: its wall time and its own peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed:\n{output[-3000:]}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20}  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000])
    parser.add_argument("--bins", nargs="+", default=["1", "5", "10", "20"], help="audience size bins")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (make gpu-check): where training and scoring run")
    parser.add_argument("--bin-type", default="PERCENTAGE", choices=["PERCENTAGE", "ABSOLUTE"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo(root / "demo", 250_000, seed=7)
        train_model(root / "demo", root / "out", args.device)
        for users in args.sizes:
            started = time.perf_counter()
            publisher = root / f"population_{users}"
            write_population(publisher, users)
            generated = time.perf_counter() - started
            result = export(publisher, root / "demo" / "seed.jsonl", root / "out", args.bins, args.bin_type, args.device)
            rows.append({"users": users, "users_per_s": users / result["wall_s"], "generate_s": generated} | result)
            print(f"{users:,} users: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
            for file in publisher.iterdir():
                file.unlink()  # keep at most one population on disk
    base = rows[0]
    print(f"\nexport on {args.device}, {args.bin_type} bins {args.bins}, 2 audiences, {os.cpu_count()} CPU cores\n")
    print("| users | time vs smallest per user | peak RSS vs smallest | wall s | users/s | peak RSS GiB |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        per_user = (r["wall_s"] / r["users"]) / (base["wall_s"] / base["users"])
        print(
            f"| {r['users']:,} | {per_user:.2f}x | {r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x | {r['wall_s']:.1f} | "
            f"{r['users_per_s']:,.0f} | {r['peak_rss_gib']:.2f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"export_scaling_{args.device}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
