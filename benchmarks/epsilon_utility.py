"""Epsilon-utility benchmark on real data (UCI Adult): recall@20% and AUC of the two-tower model
at epsilon 0.5, 1, 2, 4, 8 and without DP, several seeds each, measured in one process.

    .venv/bin/python benchmarks/epsilon_utility.py            # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/epsilon_utility.py --seeds 1 --epsilons 1

Prints a Markdown table (mean and spread over seeds, and the ratio to the non-private model)
and writes benchmarks/results/epsilon_utility.{json,png}. Held-out metrics are exact
(trusted-evaluation mode: Adult is public data), so the table shows the model's utility, not
the evaluation noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lookalike.cli.budget import main as budget_main
from lookalike.data.adult import write_adult
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training.train import CONFIG_DIR, run

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(data: Path, out: Path, epsilon: float | None, seed: int, extra: list[str] | None = None) -> dict:
    # Adult is public: its owners (us) allow exact metrics and the non-private baseline.
    budget_main(
        [
            "--ledger",
            str(out / "privacy_ledger.sqlite"),
            "create",
            "--publisher",
            str(data / "publisher.parquet"),
            "--epsilon",
            "1000",
            "--if-missing",
            "--allow-trusted-evaluation",
            "--allow-non-private",
        ]
    )
    overrides = [
        "experiment=adult",
        f"paths.output_dir={out}",
        f"data.publisher_path={data / 'publisher.parquet'}",
        f"data.seed_path={data / 'seed.jsonl'}",
        f"seed={seed}",
        "trainer.progress_bar=false",
        "trainer.device=cpu",
        f"mlflow.experiment_name=bench-{seed}-{epsilon}",
    ]
    overrides += ["privacy.enabled=false"] if epsilon is None else [f"privacy.target_epsilon={epsilon}", *(extra or [])]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run(cfg)
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    m = logged.data.metrics
    return {
        "epsilon": epsilon,
        "seed": seed,
        "recall_at_20pct": m["trusted.high_income.recall_at_20pct"],
        "auc": m["trusted.high_income.auc"],
        "epsilon_spent": m.get("privacy.epsilon_spent"),
        # dp_sgd or label_rr: what privacy.mechanism (auto by default) chose for this run
        "mechanism": logged.data.params.get("privacy.mechanism_used", "none"),
    }


def table(rows: list[dict], epsilons: list[float | None]) -> str:
    base = [r for r in rows if r["epsilon"] is None]
    base_recall = np.mean([r["recall_at_20pct"] for r in base]) if base else np.nan
    lines = ["| epsilon | mechanism | recall@20% | AUC | recall vs non-private |", "| --- | --- | --- | --- | --- |"]
    for eps in epsilons:
        sel = [r for r in rows if r["epsilon"] == eps]
        rec, auc = np.array([r["recall_at_20pct"] for r in sel]), np.array([r["auc"] for r in sel])
        lines.append(
            f"| {'non-private' if eps is None else f'{eps:g}'} | {', '.join(sorted({r.get('mechanism', 'none') for r in sel}))} | "
            f"{rec.mean():.3f} ± {rec.std():.3f} | "
            f"{auc.mean():.3f} ± {auc.std():.3f} | {rec.mean() / base_recall:.3f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], epsilons: list[float | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [e for e in epsilons if e is not None]
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label in (("recall_at_20pct", "recall@20%"), ("auc", "AUC")):
        means = [np.mean([r[key] for r in rows if r["epsilon"] == e]) for e in private]
        line = ax.plot(private, means, "o-", label=f"{label}, DP")[0]
        base = [r[key] for r in rows if r["epsilon"] is None]
        if base:
            ax.axhline(np.mean(base), color=line.get_color(), ls=":", label=f"{label}, non-private")
    ax.set(xscale="log", xlabel="epsilon", ylabel="held-out utility", title="UCI Adult: utility vs epsilon")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--no-baseline", action="store_true", help="skip the non-private runs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the DP runs (e.g. privacy.mechanism=dp_sgd)")
    parser.add_argument("--label", default="", help="appended to the results files' names")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    epsilons: list[float | None] = list(args.epsilons) + ([] if args.no_baseline else [None])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "adult"
        write_adult(data)
        for eps in epsilons:
            for seed in args.seeds:
                # A ledger of its own per run: one budget's delta (1/R for Adult's R users) covers about ten runs.
                rows.append(one_run(data, Path(tmp) / f"out-{eps}-{seed}", eps, seed, args.set))
                print(f"epsilon {eps}, seed {seed}: recall@20% {rows[-1]['recall_at_20pct']:.4f}, AUC {rows[-1]['auc']:.4f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = "epsilon_utility" + (f"_{args.label}" if args.label else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, epsilons, RESULTS / f"{name}.png")
    print(table(rows, epsilons))


if __name__ == "__main__":
    main()
