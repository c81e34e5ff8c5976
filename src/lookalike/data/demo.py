"""`lookalike-demo-data`: a synthetic publisher table with planted structure and a seed file.

Two audiences hide in the data: ``sports`` (young, mobile, sports interests, many sessions) and
``luxury`` (high income, a few rich cities and countries, travel interests). The advertiser's seed
holds part of each audience's converters plus some ids the publisher has never seen.

    lookalike-demo-data --output-dir data/demo --users 250000
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

log = logging.getLogger(__name__)
N_TOPICS, N_CITIES, COHORTS = 300, 5000, ["2025-01", "2025-02", "2025-03", "2025-04"]
COUNTRIES = [f"C{i:02d}" for i in range(30)]
DEVICES = ["ios", "android", "desktop", "tablet", "tv", "other"]


def generate(n_users: int, seed: int = 7) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The publisher table and the true converters of each audience."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n_users).astype(np.float64)
    income = rng.lognormal(3.8, 0.5, n_users)
    sessions = rng.poisson(12, n_users).astype(np.float64)
    device = rng.choice(len(DEVICES), n_users, p=[0.35, 0.35, 0.15, 0.08, 0.05, 0.02])
    country = rng.zipf(1.6, n_users) % len(COUNTRIES)
    city = rng.zipf(1.3, n_users) % N_CITIES
    n_interests = rng.integers(1, 7, n_users)
    interests = [rng.choice(N_TOPICS, k, replace=False) for k in n_interests]
    sports_share = np.array([(t < 20).mean() for t in interests])
    travel_share = np.array([((t >= 20) & (t < 40)).mean() for t in interests])

    sports = 3.0 * sports_share - 0.04 * (age - 35) + 0.08 * (sessions - 12) + 0.8 * (device <= 1)
    luxury = 1.6 * (np.log(income) - 3.8) / 0.5 + 2.5 * travel_share + 1.2 * np.isin(country, [1, 3, 5]) + 1.0 * (city % 97 == 0)
    converters = {}
    for name, logit in (("sports", sports), ("luxury", luxury)):
        logit = logit + rng.normal(0, 0.5, n_users)
        converters[name] = np.flatnonzero(logit > np.quantile(logit, 0.95))

    numeric = {"age": age, "income_k": income, "sessions_30d": sessions}
    for j in range(13):  # filler signals, some correlated with the audiences, most pure noise
        base = rng.normal(0, 1, n_users)
        numeric[f"signal_{j:02d}"] = base + (0.6 * sports if j == 0 else 0.6 * luxury if j == 1 else 0)
    numeric["sessions_30d"][rng.random(n_users) < 0.02] = np.nan  # some missing values (nulls)
    columns = {"user_id": pa.array([f"u{i:07d}" for i in range(n_users)])}
    for name, values in numeric.items():
        columns[name] = pa.array(values, mask=np.isnan(values))
    columns |= {
        "device": pa.array(np.array(DEVICES)[device]),
        "country": pa.array(np.array(COUNTRIES)[country]),
        "city": pa.array(np.char.add("city_", city.astype(str))),
        "interests": pa.array([[f"topic_{t}" for t in row] for row in interests], type=pa.list_(pa.string())),
        "cohort": pa.array(np.array(COHORTS)[rng.integers(0, len(COHORTS), n_users)]),
    }
    return pa.table(columns), converters


def write_demo(output_dir: Path, n_users: int, seed: int, observed: float = 0.6, foreign: float = 0.05) -> None:
    table, converters = generate(n_users, seed)
    rng = np.random.default_rng(seed + 1)
    publisher = output_dir / "publisher"
    if publisher.exists():
        shutil.rmtree(publisher)
    # Hive-partitioned by cohort, so `data.window` on it prunes whole folders.
    ds.write_dataset(
        table,
        publisher,
        format="parquet",
        partitioning=["cohort"],
        partitioning_flavor="hive",
        existing_data_behavior="overwrite_or_ignore",
        max_rows_per_group=1 << 16,
        preserve_order=True,
    )
    ids = table.column("user_id").to_numpy(zero_copy_only=False)
    lines = []
    for name, rows in converters.items():
        # The advertiser knows only some converters, and some of its ids are not publisher users.
        known = rng.choice(rows, int(observed * rows.size), replace=False)
        lines += [{"user_id": str(ids[r]), "audience": name} for r in known]
        lines += [{"user_id": f"x{name}{k:06d}", "audience": name} for k in range(int(foreign * known.size))]
    (output_dir / "seed.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    truth = {name: [str(ids[r]) for r in rows] for name, rows in converters.items()}
    (output_dir / "ground_truth.json").write_text(json.dumps(truth))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lookalike-demo-data", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--users", type=int, default=250_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--dataset", choices=["synthetic", "adult"], default="synthetic", help="synthetic (planted structure) or adult (the shipped UCI Adult table, real data)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dataset == "adult":
        from lookalike.data.adult import write_adult

        users, seed = write_adult(args.output_dir)
        log.info("wrote %s/publisher.parquet (%d Adult census records) and %s/seed.jsonl (%d income >50K users)", args.output_dir, users, args.output_dir, seed)
        return
    if args.users < 1000:
        parser.error("--users must be at least 1000 so each audience clears the matching threshold")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_demo(args.output_dir, args.users, args.seed)
    log.info("wrote %s/publisher (%d users) and %s/seed.jsonl", args.output_dir, args.users, args.output_dir)


if __name__ == "__main__":
    main()
