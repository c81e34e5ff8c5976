"""Streaming top-k against a full sort."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lookalike.export.topk import TopK


@pytest.mark.parametrize(("n", "k", "chunk"), [(10_000, 100, 777), (5_000, 5_000, 1000), (300, 1000, 64), (20_000, 1, 5000)])
def test_streaming_topk_equals_a_full_sort(n, k, chunk):
    rng = np.random.default_rng(0)
    scores = rng.random(n).astype(np.float32)
    ids = pa.array([f"u{i}" for i in range(n)])
    top = TopK(k)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        sub = rows[rows % 3 != 0]  # only some rows are eligible, as after seed exclusion
        top.push(scores[sub], scores[sub], ids.slice(start, len(rows)), sub - start)
    keys, got_scores, got_ids = top.result()
    eligible = np.flatnonzero(np.arange(n) % 3 != 0)
    expected = eligible[np.argsort(-scores[eligible], kind="stable")][:k]
    assert got_ids.to_pylist() == [f"u{i}" for i in expected]
    np.testing.assert_array_equal(got_scores, scores[expected])
    assert len(top._keys[0]) <= max(k, 1)


def test_keys_rank_and_scores_travel_separately():
    top = TopK(3)
    top.push(np.array([0.5, 2.1, 0.9, 2.2]), np.array([0.5, 0.1, 0.9, 0.2], dtype=np.float32), pa.array(["a", "s1", "b", "s2"]))
    keys, scores, ids = top.result()
    assert ids.to_pylist() == ["s2", "s1", "b"] and scores.tolist() == pytest.approx([0.2, 0.1, 0.9])


def test_ties_are_broken_by_id_whatever_the_arrival_order():
    import numpy as np
    import pyarrow as pa

    from lookalike.export.topk import TopK

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 5, 3000).astype(np.float32)  # heavy ties, also at the k-th place
    ids = pa.array([f"u{i:05d}" for i in range(3000)])
    results = []
    for order in (np.arange(3000), rng.permutation(3000), rng.permutation(3000)):
        top = TopK(700)
        for chunk in np.array_split(order, 13):
            top.push(keys[chunk], keys[chunk], ids.take(pa.array(chunk)))
        got_keys, _, got_ids = top.result()
        results.append(got_ids.to_pylist())
    assert results[0] == results[1] == results[2]
    want = sorted(zip(-keys, ids.to_pylist()))[:700]
    assert results[0] == [i for _, i in want]
