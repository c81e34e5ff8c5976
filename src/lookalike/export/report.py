"""The shareable report: per audience and bin, segment size, relevance and recall, with every
seed-derived count released through the Gaussian mechanism (or exact in trusted mode) and every
count below ``rules.min_aggregation_size`` suppressed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike.export.scoring import AudienceScores
from lookalike.privacy.mechanisms import add_gaussian_noise


@dataclass
class ReleasePlan:
    """How seed-derived numbers leave the room."""

    trusted: bool
    sigma: float  # Gaussian noise std per count (0 in trusted mode)
    noisy_segment_sizes: bool  # sizes after exact seed exclusion depend on the seed
    min_aggregation_size: int

    def dims_per_audience(self, n_bins: int) -> int:
        return 1 + n_bins + (n_bins if self.noisy_segment_sizes else 0)

    def release(self, values: np.ndarray) -> list[int | None]:
        """Noise (unless trusted), round, and suppress anything below the minimum."""
        out = values.astype(np.float64) if self.trusted else add_gaussian_noise(values.astype(np.float64), self.sigma)
        return [int(round(v)) if v >= self.min_aggregation_size else None for v in out]


def bin_sizes(kind: str, bins: list[float], population: int) -> list[int]:
    if kind == "ABSOLUTE":
        return [int(b) for b in bins]
    return [max(1, math.ceil(b / 100.0 * population)) for b in bins]


def audience_report(
    st: AudienceScores, population: int, bins: list[float], sizes: list[int], plan: ReleasePlan, segment_counts: list[int], written: list[bool]
) -> dict:
    """Everything the advertiser may see about one audience."""
    _, pop_scores, pop_ids = st.population.result()
    mean_score = st.score_sum / max(population, 1)
    held, held_ids = st.holdout_scores()
    hits = holdout_hits(held, held_ids, pop_scores, pop_ids, sizes)
    parts = [np.array([held.size], dtype=np.float64), np.asarray(hits, dtype=np.float64)]
    if plan.noisy_segment_sizes:
        parts.append(np.array(segment_counts, dtype=np.float64))
    raw = np.concatenate(parts)
    released = plan.release(raw)
    n_held, released_hits = released[0], released[1 : 1 + len(sizes)]
    released_sizes = released[1 + len(sizes) :] if plan.noisy_segment_sizes else [c if c >= plan.min_aggregation_size else None for c in segment_counts]
    rows = []
    for i, (b, k) in enumerate(zip(bins, sizes)):
        share = min(k, population) / max(population, 1)
        recall = None
        hit = released_hits[i]
        if n_held is not None and hit is not None:
            recall = min(hit / n_held, 1.0)
        relevance = float(pop_scores[: min(k, pop_scores.size)].mean() / mean_score) if pop_scores.size and mean_score > 0 else None
        rows.append(
            {
                "bin": b,
                "requested_size": k,
                "population_share": round(share, 6),
                "segment_size": released_sizes[i],
                "segment": "written" if written[i] else f"not written: fewer than {plan.min_aggregation_size} users or list output off",
                "relevance": None if relevance is None else round(relevance, 4),
                "recall": None if recall is None else round(recall, 4),
                "lift": None if recall is None or share == 0 else round(recall / share, 4),
            }
        )
    return {"held_out_seed_users": n_held, "bins": rows, "seed_quality": seed_quality(rows)}


def holdout_hits(held: np.ndarray, held_ids: pa.Array, pop_scores: np.ndarray, pop_ids: pa.Array, sizes: list[int]) -> np.ndarray:
    """Per bin size k, how many held-out seed users rank within the population's top k.

    ``pop_scores``/``pop_ids`` are the population's best users ordered by (score descending, id
    ascending), as ``TopK`` returns them. Counting ``score >= k-th score`` instead gave tied
    users one shared fate: one added user could lift the threshold onto (or off) a run of tied
    held-out users and move a count by the size of that run. Under a strict total order one
    user added or removed shifts every position by at most one, so at most one held-out user
    crosses each cut-off; the order covers every publisher user, seed or not, so flipping one
    user's seed membership changes only that user's own hit. Each count has sensitivity 1.
    """
    hits = np.zeros(len(sizes), dtype=np.float64)
    if pop_scores.size == 0 or held.size == 0:
        return hits
    for b, k in enumerate(sizes):
        j = min(k, pop_scores.size) - 1  # past the population, everyone is within the top k
        score, user = pop_scores[j], pop_ids[j]
        # (score, -id) compared lexicographically against the k-th element; the id comparison
        # (Arrow, bytewise like TopK's id sort) is only needed for users tied with it.
        inside = held > score
        tied = held == score
        if tied.any():
            inside |= tied & pc.less_equal(held_ids, user).to_numpy(zero_copy_only=False)
        hits[b] = inside.sum()
    return hits


def seed_quality(rows: list[dict]) -> dict:
    """AWS and LiveRamp advise checking that a seed is distinctive: its held-out users must rank
    above their share of the population somewhere."""
    lifts = [r["lift"] for r in rows if r["lift"] is not None]
    if not lifts:
        return {"verdict": "unknown", "detail": "held-out counts were suppressed (below the minimum aggregation size)"}
    if max(lifts) <= 1.0:
        return {
            "verdict": "not distinctive",
            "detail": "held-out seed users fall in each segment no more often than random users: the seed does not stand out; "
            "check the seed (size, id matching) or the features",
        }
    return {"verdict": "distinctive", "detail": f"best lift over random {max(lifts):.2f}x"}


def plot_report(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audiences = report["audiences"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, a in audiences.items():
        share = [100 * r["population_share"] for r in a["bins"]]
        axes[0].plot(share, [r["recall"] if r["recall"] is not None else np.nan for r in a["bins"]], "o-", label=name)
        axes[1].plot(share, [r["relevance"] if r["relevance"] is not None else np.nan for r in a["bins"]], "o-", label=name)
    top = max((100 * r["population_share"] for a in audiences.values() for r in a["bins"]), default=1)
    axes[0].plot([0, top], [0, top / 100], "k:", label="random")
    title = "Recall (DP)" if not report["privacy"]["trusted"] else "Recall (trusted, exact)"
    axes[0].set(xlabel="segment size (% of users)", ylabel="held-out seed recall", title=title)
    axes[1].set(xlabel="segment size (% of users)", ylabel="mean score / population mean", title="Relevance")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
