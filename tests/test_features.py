"""Feature inference, vocabularies, standardisation and encoding on real Arrow data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from lookalike.data.encode import encode
from lookalike.data.feature_stats import fit_feature_spec
from lookalike.data.features import FeatureSpec, declared_feature_kinds, infer_feature_kinds
from lookalike.errors import ConfigError, DataError

DATA_CFG = OmegaConf.create(
    {
        "id_column": "user_id",
        "non_finite": "refuse",
        "vocab": {"max_size": 2, "min_count": 1},
        "max_multi_length": 3,
        "heavy_tail_log": True,
        "piecewise_linear_bins": None,
    }
)


def table() -> pa.Table:
    return pa.table(
        {
            "user_id": ["a", "b", "c", "d", "e"],
            "age": pa.array([20.0, 30.0, None, 40.0, 50.0]),
            "visits": pa.array([1, 2, 3, 4, 5], type=pa.int32()),
            "device": ["ios", "ios", "web", None, "tv"],
            "tags": pa.array([["x", "y"], [], None, ["x", "z", "y", "x"], ["z"]], type=pa.list_(pa.string())),
            "opt_in": [True, False, True, True, False],
        }
    )


def test_kinds_are_inferred_from_the_arrow_schema():
    kinds = infer_feature_kinds(table().schema, exclude={"user_id"})
    assert kinds == {"numeric": ["age", "visits"], "categorical": ["device", "opt_in"], "multi_categorical": ["tags"]}


def test_declared_columns_must_exist():
    with pytest.raises(ConfigError, match="data.features.numeric.*'height' is not in publisher data"):
        declared_feature_kinds({"numeric": ["height"]}, table().schema, {"user_id"}, "pub.parquet")


def test_vocabulary_keeps_the_most_frequent_values_and_indexes_oov():
    t = table()
    spec = fit_feature_spec(t, {"numeric": ["age"], "categorical": ["device"], "multi_categorical": ["tags"]}, DATA_CFG, "p")
    assert spec.categorical[0].vocabulary == ["ios", "tv"]  # ios twice; tv before web on the tie
    assert spec.multi_categorical[0].vocabulary == ["x", "y"]
    enc = encode(t, spec)
    # 0 = missing, 1 = out of vocabulary, 2 + position otherwise
    assert enc.categorical[:, 0].tolist() == [2, 2, 1, 0, 3]
    assert enc.multi[0].tolist() == [[2, 3, 0], [0, 0, 0], [0, 0, 0], [2, 1, 3], [1, 0, 0]]


def test_numerics_are_standardised_with_a_missing_flag():
    spec = fit_feature_spec(table(), {"numeric": ["age", "visits"], "categorical": [], "multi_categorical": []}, DATA_CFG, "p")
    age = spec.numeric[0]
    assert age.mean == pytest.approx(35.0) and age.std == pytest.approx(np.std([20, 30, 40, 50]))
    assert age.missing_flag and not spec.numeric[1].missing_flag
    enc = encode(table(), spec)
    assert enc.numeric.shape == (5, 3)
    np.testing.assert_allclose(enc.numeric[:, 0], [(20 - 35) / age.std, (30 - 35) / age.std, 0.0, (40 - 35) / age.std, (50 - 35) / age.std], rtol=1e-6)
    assert enc.numeric[:, 1].tolist() == [0, 0, 1, 0, 0]


def test_non_finite_numerics_are_refused_or_imputed():
    t = table().set_column(1, "age", pa.array([20.0, float("nan"), 30.0, float("inf"), 40.0]))
    kinds = {"numeric": ["age"], "categorical": [], "multi_categorical": []}
    with pytest.raises(DataError, match="numeric column 'age' has 2 NaN/inf values.*data.non_finite=impute"):
        fit_feature_spec(t, kinds, DATA_CFG, "pub.parquet")
    impute = OmegaConf.merge(DATA_CFG, {"non_finite": "impute"})
    spec = fit_feature_spec(t, kinds, impute, "p")
    assert spec.numeric[0].mean == pytest.approx(30.0) and spec.numeric[0].missing_flag
    enc = encode(t, spec)
    assert np.isfinite(enc.numeric).all() and enc.numeric[:, 1].tolist() == [0, 1, 0, 1, 0]


def test_string_typed_numeric_column_is_refused():
    t = table().append_column("score", pa.array(["1", "2", "3", "4", "5"]))
    with pytest.raises(DataError, match="numeric column 'score' has type string"):
        fit_feature_spec(t, {"numeric": ["score"], "categorical": [], "multi_categorical": []}, DATA_CFG, "p")


def test_spec_round_trips_through_json():
    spec = fit_feature_spec(table(), infer_feature_kinds(table().schema, {"user_id"}), DATA_CFG, "p")
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec
    np.testing.assert_array_equal(encode(table(), again).numeric, encode(table(), spec).numeric)


def test_a_heavy_tailed_amount_is_read_on_the_log_scale_and_old_specs_still_load():
    from lookalike.data.feature_stats import merge_statistics, spec_from_statistics, table_statistics

    gains = np.zeros(1000)
    gains[:10] = np.linspace(1_000, 99_999, 10)  # mostly zero, a few far out: like Adult's capital gain
    t = pa.table({"user_id": [str(i) for i in range(1000)], "gain": gains, "age": np.linspace(18, 90, 1000), "debt": -gains})
    kinds = {"numeric": ["gain", "age", "debt"], "categorical": [], "multi_categorical": []}
    cfg = OmegaConf.merge(DATA_CFG, {"heavy_tail_log": True})
    spec = spec_from_statistics(table_statistics(t, kinds, "refuse", "x"), cfg)
    gain, age, debt = spec.numeric
    assert gain.log and not age.log and not debt.log  # a negative column keeps its scale
    assert gain.mean == pytest.approx(np.log1p(gains).mean()) and gain.std == pytest.approx(np.log1p(gains).std())
    encoded = encode(t, spec).numeric[:, 0]
    assert encoded == pytest.approx((np.log1p(gains) - gain.mean) / gain.std, rel=1e-5)
    # two shards merge to the same spec; the switch off gives the plain standardisation
    halves = [table_statistics(t.slice(0, 400), kinds, "refuse", "x"), table_statistics(t.slice(400), kinds, "refuse", "x")]
    merged = spec_from_statistics(merge_statistics(halves), cfg).numeric[0]
    assert merged.log and merged.mean == pytest.approx(gain.mean) and merged.std == pytest.approx(gain.std)
    plain = spec_from_statistics(table_statistics(t, kinds, "refuse", "x"), OmegaConf.merge(DATA_CFG, {"heavy_tail_log": False})).numeric[0]
    assert not plain.log and plain.mean == pytest.approx(gains.mean())
    # a bundle saved before the log scale existed has no "log" key: it reads as plain
    numeric = [{"name": "gain", "mean": 1.0, "std": 2.0, "missing_flag": False}]
    old = json.dumps({"id_column": "user_id", "non_finite": "refuse", "numeric": numeric, "categorical": [], "multi_categorical": []})
    assert FeatureSpec.from_json(old).numeric[0].log is False
