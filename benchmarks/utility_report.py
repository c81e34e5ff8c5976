"""The utility benchmark's report (benchmarks/utility.py): each table and seed size's lift at
the top 20 % per model over its repeats, the ratios between models, the goals each row meets or
misses, and the Markdown table of it all."""

from __future__ import annotations

import numpy as np

MODELS = ("dp", "tuned", "own", "gbm")  # DP two-tower, the same privately tuned, without DP, gradient boosting


def summary(runs: list[dict]) -> list[dict]:
    out = []
    for table, size in dict.fromkeys((r["table"], r["seed_size"]) for r in runs):
        sel = [r for r in runs if r["table"] == table and r["seed_size"] == size]
        row = {"table": table, "seed_size": size, "seed_users": int(round(np.mean([r["seed_users"] for r in sel])))}
        for m in MODELS:
            lifts = [r["lift_at_20pct"] for r in sel if r["model"] == m]
            if lifts:
                row[m] = {
                    "mean": float(np.mean(lifts)),
                    "min": float(np.min(lifts)),
                    "max": float(np.max(lifts)),
                    "n": len(lifts),
                    "auc_mean": float(np.mean([r["auc"] for r in sel if r["model"] == m])),
                    "wall_s_mean": float(np.mean([r["wall_s"] for r in sel if r["model"] == m])),
                }
        for a, b in (("dp", "gbm"), ("dp", "own"), ("own", "gbm"), ("tuned", "dp"), ("tuned", "own")):
            if a in row and b in row:
                row[f"{a}/{b}"] = row[a]["mean"] / row[b]["mean"]
        row["misses"] = [f"{key} {row[key]:.3f} < {goal:g}" for key, goal in goals(row["seed_size"]).items() if key in row and row[key] < goal]
        out.append(row)
    return out


def goals(seed_size: str) -> dict[str, float]:
    """Issue 24's goals (epsilon 1, defaults): at the full seed DP >= 0.93x gradient boosting and
    >= 0.95x our own non-private model; with a 750-user seed >= 0.88x our own, with a 150-user
    seed >= 0.8x; our own non-private model within 3% of gradient boosting everywhere (issue 15)."""
    if seed_size == "full":
        return {"dp/gbm": 0.93, "dp/own": 0.95, "own/gbm": 0.97}
    return {"dp/own": 0.88 if int(seed_size) >= 500 else 0.8, "own/gbm": 0.97}


SWING = 0.15  # a cell whose min-max spread is at least this share of its mean says so beside it


def markdown(rows: list[dict]) -> str:
    def cell(row, m):
        if m not in row:
            return "-"
        v = row[m]
        if v["n"] == 1:
            return f"{v['mean']:.3f}"
        swing = (v["max"] - v["min"]) / v["mean"] if v["mean"] else 0.0
        # One split's lift can swing by a third on a small seed (Caravan): said beside the mean.
        return f"{v['mean']:.3f} ({v['min']:.3f}-{v['max']:.3f}" + (f"; swings {swing:.0%})" if swing >= SWING else ")")

    def ratio(row, key):
        return f"{row[key]:.3f}" if key in row else "-"

    tuned = any("tuned" in r for r in rows)
    head = "| data | seed users | DP two-tower (mean, min-max of n) |" + (" DP, privately tuned | tuned/DP | tuned/own |" if tuned else "")
    lines = [
        head + " own non-private | gradient boosting | DP/GBM | DP/own | own/GBM | goals |",
        "|" + " --- |" * (head.count("|") - 1 + 6),
    ]
    for r in rows:
        seed = f"{r['seed_users']:,}" + (" (half)" if r["seed_size"] == "full" else "")
        extra = f" {cell(r, 'tuned')} | {ratio(r, 'tuned/dp')} | {ratio(r, 'tuned/own')} |" if tuned else ""
        lines.append(
            f"| {r['table']} | {seed} | {cell(r, 'dp')} |{extra} {cell(r, 'own')} | {cell(r, 'gbm')} | {ratio(r, 'dp/gbm')} | "
            f"{ratio(r, 'dp/own')} | {ratio(r, 'own/gbm')} | {'met' if not r['misses'] else 'missed: ' + '; '.join(r['misses'])} |"
        )
    return "\n".join(lines)
