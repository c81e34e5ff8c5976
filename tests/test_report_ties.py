"""The export report's seed-derived counts keep sensitivity 1 when scores tie.

Users with identical features score identically (11,174 of the 48,842 UCI Adult rows share their
whole feature vector with another row). Counting ``score >= k-th score`` let one added user move
hits@k by a whole run of tied held-out users; ranking by (score desc, id asc) moves it by at most 1.
Everything runs through the real streaming state (``scoring._update``) and ``audience_report``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from lookalike.data.matching import split_draws
from lookalike.export.report import ReleasePlan, audience_report
from lookalike.export.scoring import ExportOptions, _update, empty_state
from lookalike.export.shards import load_parts, save_part

SIZES = [10, 69, 70, 100, 10_000]  # 10_000: past the population, every held-out user is a hit


class Capture(ReleasePlan):
    """A trusted plan that keeps the raw vector handed to the release: [held-out, hits per bin]."""

    def release(self, values):
        self.raw = np.asarray(values, dtype=np.float64).copy()
        return super().release(values)


def scored(scores, ids, seed, sizes=SIZES, holdout_fraction=1.0, chunk=97, rows=None):
    """Stream the users (in a shuffled order, in chunks) through the export's scoring state."""
    st = empty_state({"a": 0}, max(sizes))["a"]
    options = ExportOptions(False, "exact", 1.0, None, holdout_fraction, 7)
    order = np.random.default_rng(1).permutation(len(scores)) if rows is None else rows
    seed = pa.array(sorted(seed), type=pa.string())
    for part in np.array_split(order, max(1, len(order) // chunk)):
        _update(st, scores[part], pa.array([ids[i] for i in part], type=pa.string()), seed, options, np.random.default_rng())
    return st


def counts(st, population, sizes=SIZES):
    plan = Capture(trusted=True, sigma=0.0, noisy_segment_sizes=False, min_aggregation_size=0)
    report = audience_report(st, population, sizes, sizes, plan, [0] * len(sizes), [False] * len(sizes))
    return plan.raw, report


def tied_population():
    """9 users on top, a run of 60 tied at 0.5 (positions 10-69), a run of 50 tied at 0.25
    (positions 70-119), 200 distinct lower scores; held-out seed users in every part."""
    scores = np.concatenate([np.full(9, 0.9), np.full(60, 0.5), np.full(50, 0.25), np.linspace(0.2, 0.01, 200)]).astype(np.float32)
    ids = [f"u{i:04d}" for i in range(scores.size)]  # ascending: index + 1 is the position
    seed = set(ids[9:69:3]) | set(ids[69:119:3]) | set(ids[119::20])  # 20 + 17 + 10
    return scores, ids, seed


def brute_force(scores, ids, held, sizes=SIZES):
    """Positions in the (score desc, id asc) order of everyone, then held-out users within k."""
    position = {user: p for p, (_, user) in enumerate(sorted(zip(-scores.astype(np.float64), ids)), start=1)}
    return np.array([len(held)] + [sum(position[u] <= k for u in held) for k in sizes], dtype=np.float64)


def test_the_tied_population_counts_by_rank():
    scores, ids, seed = tied_population()
    raw, _ = counts(scored(scores, ids, seed), scores.size)
    # By score alone hits@10 would be 20 (the whole tied run) and hits@70 would be 37.
    assert raw.tolist() == [47, 1, 20, 21, 31, 47]
    np.testing.assert_array_equal(raw, brute_force(scores, ids, seed))


@pytest.mark.parametrize("score", [0.95, 0.5, 0.4, 0.25])  # above all, in the upper run, between the runs, in the lower run
@pytest.mark.parametrize("where", ["first", "middle", "last"])  # where its id sorts among its ties
def test_one_added_user_moves_each_count_by_at_most_one(score, where):
    scores, ids, seed = tied_population()
    before, _ = counts(scored(scores, ids, seed), scores.size)
    run = np.flatnonzero(scores == np.float32(score))  # the users it ties with (none above all or between runs)
    new_id = {"first": "a", "middle": f"{ids[run[run.size // 2]]}x" if run.size else "m", "last": "z"}[where]
    more_scores = np.append(scores, np.float32(score))
    after, _ = counts(scored(more_scores, ids + [new_id], seed), more_scores.size)
    assert np.abs(after - before).max() <= 1, (before.tolist(), after.tolist())
    np.testing.assert_array_equal(after, brute_force(more_scores, ids + [new_id], seed))
    if score == 0.95:
        assert (before[1], after[1]) == (1, 0)  # by score alone: 20 -> 0


@pytest.mark.parametrize("user", [9, 12, 10, 69, 70, 3, 200])  # held or not, at a cut-off, in a run, on top, low
def test_flipping_one_users_seed_membership_changes_only_their_own_hits(user):
    scores, ids, seed = tied_population()
    flipped = seed ^ {ids[user]}
    before, _ = counts(scored(scores, ids, seed), scores.size)
    after, _ = counts(scored(scores, ids, flipped), scores.size)
    sign = 1 if ids[user] in flipped else -1
    position = user + 1  # ids ascend with the index, scores descend
    expected = [sign] + [sign * (position <= k) for k in SIZES]
    assert (after - before).tolist() == expected


# Small bins: the population top-k is cut back while streaming; large ones: up to past everyone.
@pytest.mark.parametrize("sizes", [[1, 37, 1500, 1501, 3000], [4000, 11_999, 12_000, 30_000]])
def test_random_heavy_ties_match_a_brute_force_rank_and_relevance_is_unchanged(sizes):
    rng = np.random.default_rng(3)
    n = 12_000
    scores = (rng.integers(0, 6, n) / 8).astype(np.float32)  # six values: cut-offs fall inside ties
    ids = [f"id-{v}" for v in rng.permutation(10 * n)[:n]]  # ids unrelated to arrival order
    seed = {ids[i] for i in np.flatnonzero(rng.random(n) < 0.3)}
    st = scored(scores, ids, seed, sizes, holdout_fraction=0.5, chunk=1000)
    assert (st.population.floor > -np.inf) == (max(sizes) == 3000)  # the streaming cut happened (or could not)
    raw, report = counts(st, n, sizes)
    seed_list = sorted(seed)
    held = [u for u, d in zip(seed_list, split_draws(pa.array(seed_list), 7)[:, 0]) if d < 0.5]
    assert 0 < len(held) < len(seed)
    np.testing.assert_array_equal(raw, brute_force(scores, ids, held, sizes))
    ranked = np.sort(scores.astype(np.float64))[::-1]
    for row, k in zip(report["bins"], sizes):
        assert row["relevance"] == round(float(ranked[: min(k, n)].mean() / ranked.mean()), 4)
        assert row["recall"] == round(min(raw[1 + sizes.index(k)] / len(held), 1.0), 4)


def test_merging_score_parts_counts_exactly_like_one_process(tmp_path):
    """Parts hold scores only; the merge tallies them against the seed in shard order, not in
    the single process's order, and must count the same (ties by id, not by arrival)."""
    rng = np.random.default_rng(5)
    n = 16_000
    scores = (rng.integers(0, 4, n) / 4).astype(np.float32)
    ids = [f"p{v:06d}" for v in rng.permutation(n)]
    seed = {ids[i] for i in np.flatnonzero(rng.random(n) < 0.2)}
    sizes = [5, 300, 1000, 1001, 1500]  # 2 x 1500 + 4096 < 16000: the merge cuts its top-k while streaming
    single = scored(scores, ids, seed, sizes, holdout_fraction=0.6)
    options = ExportOptions(False, "exact", 1.0, None, 0.6, 7)
    job = SimpleNamespace(uri="m", fingerprint="f", population=n, sizes=sizes, audiences={"a": 0}, seeds={"a": sorted(seed)}, options=options)
    order = rng.permutation(n)
    for index, rows in enumerate((order[::2], order[1::2])):
        batches = [(pa.array([ids[i] for i in chunk], type=pa.string()), {"a": scores[chunk]}) for chunk in np.array_split(rows, 5)]
        save_part(job, batches, index, 2, tmp_path)
    merged = load_parts(job, tmp_path).state["a"]
    assert merged.population.floor > -np.inf
    assert merged.population.result()[2].equals(single.population.result()[2])
    assert merged.segment.result()[2].equals(single.segment.result()[2])
    assert counts(merged, n, sizes)[0].tolist() == counts(single, n, sizes)[0].tolist()
    held = single.holdout_scores()[1].to_pylist()
    assert counts(single, n, sizes)[0].tolist() == brute_force(scores, ids, held, sizes).tolist()
