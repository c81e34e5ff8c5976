"""Utility benchmark (issue 15): lift of hidden positives in the top 20% of non-seed users, for
the DP two-tower (epsilon 1, package defaults), the same model without DP and scikit-learn's
HistGradientBoostingClassifier (defaults), on real public tables of people.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/utility.py --quick      # Adult, 750-user seed, 1 repeat
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/utility.py              # every table, full + 750 + 150 seed, 3 repeats
    .venv/bin/python benchmarks/utility.py --tables adult caravan --seed-sizes full --repeats 2
    .venv/bin/python benchmarks/utility.py --models dp tuned own gbm --output benchmarks/results/utility_tuned.json

Protocol, per table and repeat r: a keyed hash of the user id (key: r) puts each positive in the
seed half or the hidden half. The seed is the seed half ("full") or a sub-sample of it of a given
size (the users of the seed half with the smallest second keyed draw). Every model trains on the
seed (positives) against everyone else and scores every user. Evaluation population: every
non-seed user except the seed half's positives left out of a sub-sampled seed (they are neither
seed nor hidden), i.e. the hidden positives and all negatives, the same for every seed size of a
repeat. lift@20% = share of hidden positives in the top 20% of that population by score / share
of hidden positives in the whole population (ties at the cut share the remaining places pro rata).
AUC (hidden positives vs negatives) is recorded too. "tuned" is the DP run with private
tuning (``TUNED``: the search, its score's held-out users and its evaluation inside the run).

Prints a Markdown table (also saved as benchmarks/results/utility.md) and writes
benchmarks/results/utility.json (rewritten after every run, so
a stopped run keeps what it measured). Model glue: utility_models.py; tables: utility_tables.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch / scikit-learn load their thread pools
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utility_models as models  # noqa: E402
import utility_tables as tables  # noqa: E402
from utility_report import MODELS, markdown, summary  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOP = 0.2
DEFAULT_MODELS = ("dp", "own", "gbm")
# Private tuning (training/private_tuning.py) at the same training epsilon: a fifth of the seed is
# held out inside the run to score the trials, whose space adds the small-seed model to the
# learning rates and clipping norms of the default space.
TUNED = [
    "tuning.mean_trials=4",
    "trusted_evaluation=false",
    "data.holdout_fraction=0.2",
    "+tuning.space.model.small_seed_users=[null,100000]",
]


class SeedTooLarge(ValueError):
    """A sub-sampled seed larger than the table's seed half: that setting is skipped."""


def keyed_draws(ids: np.ndarray, key: str) -> np.ndarray:
    """Two uniform numbers in [0, 1) per id from BLAKE2b keyed with ``key``: reproducible, and
    independent of the row order."""
    k = key.encode()
    raw = b"".join(hashlib.blake2b(str(u).encode(), digest_size=16, key=k).digest() for u in ids)
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2) / 2.0**64


def split(ids: np.ndarray, labels: np.ndarray, repeat: int, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(seed mask, evaluation mask) for one repeat and seed size (None: the whole seed half)."""
    draws = keyed_draws(ids, f"lookalike-utility-{repeat}")
    seed_half = labels & (draws[:, 0] < 0.5)
    if size is None:
        seed = seed_half
    else:
        rows = np.flatnonzero(seed_half)
        if size > rows.size:
            raise SeedTooLarge(f"seed of {size} asked for, but the seed half has {rows.size} users")
        seed = np.zeros_like(seed_half)
        seed[rows[np.argsort(draws[rows, 1], kind="stable")[:size]]] = True
    evaluated = ~seed_half  # hidden positives and negatives; the rest of the seed half is left out
    return seed, evaluated


def lift_at(scores: np.ndarray, positive: np.ndarray, fraction: float = TOP) -> float:
    """Share of positives in the top ``fraction`` by score over their share in all rows."""
    n, k = scores.size, fraction * scores.size
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order].astype(np.float64)
    cut = s[int(np.ceil(k)) - 1]  # the score at the cut
    above, tied = s > cut, s == cut
    found = p[above].sum() + (k - above.sum()) * p[tied].sum() / tied.sum()
    return float((found / k) / (positive.sum() / n))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def one_setting(
    table: tables.Table,
    ids: np.ndarray,
    frame,
    size: int | None,
    repeat: int,
    work: Path,
    epsilon: float,
    which: tuple[str, ...],
    extra: list[str],
    dp_extra: tuple[str, ...] | list[str] = (),
) -> list[dict]:
    seed, evaluated = split(ids, table.labels, repeat, size)
    hidden = table.labels[evaluated]
    label = "full" if size is None else str(size)
    folder = work / "runs" / table.name / label / f"r{repeat}"
    folder.mkdir(parents=True, exist_ok=True)
    seed_file = models.write_seed(folder / "seed.jsonl", ids[seed].tolist())
    rows = []
    for name in which:
        start = time.perf_counter()
        if name == "gbm":
            scores, facts = models.gbm_scores(frame, seed, repeat)
        else:
            shutil.rmtree(folder / name, ignore_errors=True)  # a fresh output folder: its one run's bundle is read back
            private = name in ("dp", "tuned")
            settings = extra + (list(dp_extra) if private else []) + (TUNED if name == "tuned" else [])
            scores, facts = models.two_tower_scores(table.publisher, seed_file, folder / name, epsilon if private else None, repeat, settings)
        wall = time.perf_counter() - start
        s = scores[evaluated]
        row = {
            "table": table.name,
            "seed_size": label,
            "seed_users": int(seed.sum()),
            "repeat": repeat,
            "model": name,
            "lift_at_20pct": lift_at(s, hidden),
            "auc": auc(s, hidden),
            "hidden_positives": int(hidden.sum()),
            "evaluated_users": int(evaluated.sum()),
            "wall_s": round(wall, 2),
        } | facts
        rows.append(row)
        print(
            f"{table.name:10s} seed {label:>4s} ({row['seed_users']:5d}) r{repeat} {name:3s}: lift@20% {row['lift_at_20pct']:.3f}  "
            f"AUC {row['auc']:.3f}  {wall:6.1f} s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", choices=tables.TABLES, default=None, help="default: all")
    parser.add_argument("--repeats", type=int, default=None, help="splits per setting (default 3)")
    parser.add_argument("--seed-sizes", nargs="+", default=None, help="'full' (the seed half) and/or user counts (default: full 750 150)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS), help="tuned: DP with private tuning (TUNED)")
    parser.add_argument("--epsilon", type=float, default=1.0, help="the DP run's target epsilon")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for both two-tower runs (measuring a change; the table is of the defaults without it)",
    )
    parser.add_argument("--dp-set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for the DP runs only (dp, tuned), after --set")
    parser.add_argument("--quick", action="store_true", help="a check of the whole path: Adult, a 750-user seed, 1 repeat")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/lookalike-utility"), help="tables, package cache and run folders")
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default benchmarks/results/utility.json; utility_quick.json with --quick)")
    args = parser.parse_args(argv)
    chosen = args.tables or (["adult"] if args.quick else list(tables.TABLES))
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = args.seed_sizes or (["750"] if args.quick else ["full", "750", "150"])
    output = args.output or RESULTS / ("utility_quick.json" if args.quick else "utility.json")
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    doc = {
        "protocol": {
            "top_fraction": TOP,
            "epsilon": args.epsilon,
            "repeats": repeats,
            "seed_sizes": sizes,
            "models": args.models,
            "set": args.set,
            "dp_set": args.dp_set,
            "lookalike_imports": list(models.LOOKALIKE_IMPORTS),
        },
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
        "tables": {},
        "runs": [],
        "skipped": [],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        table = tables.prepare(name, args.work_dir / "cache", args.work_dir / "tables" / name)
        doc["tables"][name] = table.info
        ids, frame = table.ids, tables.gbm_frame(table.publisher)
        for size_text in sizes:
            size = None if size_text == "full" else int(size_text)
            for repeat in range(1, repeats + 1):
                try:
                    doc["runs"] += one_setting(table, ids, frame, size, repeat, args.work_dir, args.epsilon, tuple(args.models), args.set, args.dp_set)
                except SeedTooLarge as exc:  # a sub-sample larger than the table's seed half
                    doc["skipped"].append({"table": name, "seed_size": size_text, "reason": str(exc)})
                    print(f"{name}: seed {size_text} skipped: {exc}", flush=True)
                    break
                doc["summary"] = summary(doc["runs"])
                doc["total_wall_s"] = round(time.perf_counter() - started, 1)
                output.write_text(json.dumps(doc, indent=1))
    doc["summary"] = summary(doc["runs"])
    doc["total_wall_s"] = round(time.perf_counter() - started, 1)
    output.write_text(json.dumps(doc, indent=1))
    output.with_suffix(".md").write_text(markdown(doc["summary"]) + "\n")
    print()
    print(markdown(doc["summary"]))
    for row in doc["summary"]:
        for miss in row["misses"]:
            print(f"goal missed: {row['table']} seed {row['seed_size']}: {miss}")
    print(f"\ntotal {doc['total_wall_s']:.0f} s; results in {output}")


if __name__ == "__main__":
    main()
