"""Piecewise-linear encoding of numeric columns (data/numeric_bins.py) and its place in the spec."""

import json

import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from lookalike.data.encode import encode
from lookalike.data.feature_stats import merge_statistics, spec_from_statistics, table_statistics
from lookalike.data.features import FeatureSpec
from lookalike.data.numeric_bins import ValueHistogram, bin_edges, piecewise_linear, rounded

CFG = OmegaConf.create({"id_column": "user_id", "non_finite": "refuse", "vocab": {"max_size": 9, "min_count": 1}, "max_multi_length": 3})


def gains(n: int = 10_000) -> np.ndarray:
    """Like Adult's capital gain: 92% zeros, the rest spread over a long tail."""
    values = np.zeros(n)
    values[: n * 8 // 100] = np.geomspace(100, 99_999, n * 8 // 100).round()
    return values


def test_an_atom_is_an_edge_and_the_other_edges_split_the_tail():
    edges = bin_edges(ValueHistogram.of(gains()), 16)
    assert edges[0] == 0 and edges[-1] == pytest.approx(100_000, rel=1e-3)
    # 0 holds 92% of rows: one edge; the other 15 bins share the 8% in the tail evenly
    assert len(edges) == 17
    tail = gains()[gains() > 0]
    per_bin = np.histogram(tail, bins=edges[1:])[0]
    assert per_bin.max() <= 2.5 * tail.size / 15
    # plain quantiles of the whole column would leave the tail in two bins
    assert np.unique(np.quantile(gains(), np.linspace(0, 1, 17))).size <= 3


def test_a_column_with_few_values_gets_one_bin_per_gap_and_a_constant_none():
    assert bin_edges(ValueHistogram.of(np.array([1.0, 2.0, 2.0, 3.0] * 50)), 16) == [1.0, 2.0, 3.0]
    assert bin_edges(ValueHistogram.of(np.full(100, 7.0)), 16) == []


def test_piecewise_linear_is_each_values_way_through_each_bin():
    out = piecewise_linear(np.array([-5.0, 0.0, 1.0, 3.0, 6.0, 99.0]), [0.0, 2.0, 6.0])
    expected = [[0, 0], [0, 0], [0.5, 0], [1, 0.25], [1, 1], [1, 1]]
    np.testing.assert_allclose(out, expected)


def test_rounding_keeps_integers_and_bounds_a_continuous_column():
    assert rounded(np.array([0.0, 7.0, 999.0, 7688.0, -0.0012345])).tolist() == pytest.approx([0.0, 7.0, 999.0, 7690.0, -0.00123], rel=1e-12)
    continuous = np.random.default_rng(0).lognormal(0, 2, 200_000)
    assert ValueHistogram.of(continuous).values.size < 12_000  # 900 per decade, about a dozen decades


def test_shards_merge_to_the_edges_of_the_whole_table():
    column = gains(4000)
    np.random.default_rng(1).shuffle(column)
    whole = ValueHistogram.of(column)
    merged = ValueHistogram.of(column[:1500]).merged(ValueHistogram.of(column[1500:]))
    np.testing.assert_array_equal(merged.values, whole.values)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    t = pa.table({"user_id": [str(i) for i in range(4000)], "gain": column})
    kinds = {"numeric": ["gain"], "categorical": [], "multi_categorical": []}
    cfg = OmegaConf.merge(CFG, {"heavy_tail_log": True, "piecewise_linear_bins": 8})
    one = spec_from_statistics(table_statistics(t, kinds, "refuse", "x"), cfg)
    two = spec_from_statistics(
        merge_statistics([table_statistics(t.slice(0, 1000), kinds, "refuse", "x"), table_statistics(t.slice(1000), kinds, "refuse", "x")]), cfg
    )
    assert one.numeric[0].edges == two.numeric[0].edges and len(one.numeric[0].edges) == 9


def test_the_spec_encodes_value_flag_and_bins_and_round_trips():
    t = pa.table({"user_id": ["a", "b", "c", "d", "e"], "age": pa.array([20.0, 30.0, None, 40.0, 60.0])})
    kinds = {"numeric": ["age"], "categorical": [], "multi_categorical": []}
    spec = spec_from_statistics(table_statistics(t, kinds, "refuse", "x"), OmegaConf.merge(CFG, {"heavy_tail_log": True, "piecewise_linear_bins": 4}))
    age = spec.numeric[0]
    assert age.edges == [20.0, 30.0, 40.0, 60.0] and age.missing_flag and age.width == 1 + 1 + 3 == spec.numeric_width
    numeric = encode(t, spec).numeric
    np.testing.assert_allclose(numeric[:, 2:], [[0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 1]])
    assert numeric[2, 1] == 1 and numeric[2, 0] == 0  # missing: at the mean, flagged, no bin filled
    again = FeatureSpec.from_json(spec.to_json())
    np.testing.assert_array_equal(encode(t, again).numeric, numeric)
    # bins off: the value and flag only; a bundle saved before the bins existed reads the same way
    off = spec_from_statistics(table_statistics(t, kinds, "refuse", "x"), OmegaConf.merge(CFG, {"heavy_tail_log": True, "piecewise_linear_bins": None}))
    assert off.numeric_width == 2 and off.numeric[0].edges == []
    old = json.loads(off.to_json())
    del old["numeric"][0]["edges"]
    assert FeatureSpec.from_json(json.dumps(old)).numeric_width == 2


def test_piecewise_linear_into_a_slice_matches_float64_and_zeroes_missing_rows():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(3, 2, 5000), [np.nan, 0.0]])
    edges = sorted({float(e) for e in np.quantile(values[:-2], np.linspace(0, 1, 17))})
    missing = np.zeros(values.size, bool)
    missing[[3, 10]] = True
    matrix = np.full((values.size, len(edges) + 2), 7.0, dtype=np.float32)
    piecewise_linear(values, edges, out=matrix[:, 1 : len(edges)], missing=missing)
    e = np.asarray(edges)
    expected = np.clip((values[:, None] - e[:-1]) / np.diff(e), 0.0, 1.0)
    expected[missing | np.isnan(values)] = 0.0
    np.testing.assert_allclose(matrix[:, 1 : len(edges)], expected, atol=1e-5)
    assert (matrix[:, 0] == 7.0).all() and (matrix[:, len(edges) :] == 7.0).all()  # only the slice is written
