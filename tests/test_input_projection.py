"""model.input_projection: the publisher's principal components as the user tower's inputs."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lookalike.data.principal_inputs import InputMoments, dense_inputs, principal_projection
from lookalike.errors import ConfigError
from lookalike.model.bundle import load_bundle
from lookalike.model.projected_inputs import ProjectedInputs
from lookalike.training.config import train_config
from lookalike.training.prepare import prepare
from lookalike.training.train import run

PROJECTED = ("model.input_projection=6", "model.hidden_dims=[]", "model.similarity=dot")


def test_the_projection_whitens_the_top_principal_directions(demo_dir, cfg_factory):
    data = prepare(train_config(cfg_factory(*PROJECTED)))
    features, spec = data.train_features, data.spec
    x = dense_inputs(features, spec)
    moments = InputMoments.of(features, spec)
    projection = principal_projection(moments, 6)
    z = projection.apply(x)
    # unit variance, uncorrelated: the covariance of the components is the identity
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(6), atol=1e-8)
    # the same subspace as the top 6 right singular vectors of the centred data
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    basis = vt[:6].T
    unit = projection.matrix / np.linalg.norm(projection.matrix, axis=0)
    np.testing.assert_allclose(np.linalg.norm(basis.T @ unit, axis=0), 1.0, atol=1e-6)
    # shards add up to the whole
    half = len(features) // 2
    merged = InputMoments.of(features.take(np.arange(half)), spec).merged(InputMoments.of(features.take(np.arange(half, len(features))), spec))
    np.testing.assert_allclose(principal_projection(merged, 6).matrix, projection.matrix, atol=1e-8)


def test_the_tower_builds_the_same_dense_vector_in_torch(cfg_factory):
    data = prepare(train_config(cfg_factory(*PROJECTED)))
    features, spec = data.train_features, data.spec
    assert spec.multi_categorical and spec.categorical  # every kind of input is covered
    layer = ProjectedInputs(spec, 6)
    layer.fill(data.projection)
    tensors = features.tensors()
    np.testing.assert_allclose(layer.dense(*tensors).numpy(), dense_inputs(features, spec), atol=1e-6)
    np.testing.assert_allclose(layer(*tensors).numpy(), data.projection.apply(dense_inputs(features, spec)), rtol=1e-4, atol=1e-4)


def test_the_projection_is_fitted_on_the_publisher_table_without_the_seed(demo_dir, cfg_factory, tmp_path):
    # Half the seed, another seed: the projection must not move (it is fitted before the seed is read).
    # DP-SGD keeps only the seed and the sampled negatives of its streamed pass (privacy.mechanism=auto
    # keeps randomised response's population too, every user of the demo), so a fit on the kept rows
    # would move with the seed.
    lines = (demo_dir / "seed.jsonl").read_text().splitlines()
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("\n".join(lines[::2]) + "\n")
    full = prepare(train_config(cfg_factory(*PROJECTED, "privacy.mechanism=dp_sgd"))).projection
    half = prepare(train_config(cfg_factory(*PROJECTED, "privacy.mechanism=dp_sgd", f"data.seed_path={fewer}"))).projection
    assert full is not None and half is not None
    np.testing.assert_array_equal(full.matrix, half.matrix)
    np.testing.assert_array_equal(full.mean, half.mean)
    # and it covers every publisher user in the window, not only the training set
    rows = pq.read_table(demo_dir / "publisher").num_rows
    assert prepare(train_config(cfg_factory(*PROJECTED))).publisher_rows == rows


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_a_projected_model_trains_under_dp_and_comes_back_from_its_bundle(cfg_factory, tmp_path):
    cfg = cfg_factory(*PROJECTED, "trainer.epochs=2", "privacy.target_epsilon=4")
    run(cfg)
    (bundle,) = sorted((tmp_path / "out" / "runs").glob("*/bundle"))
    model, spec, meta = load_bundle(bundle)
    assert meta["model"]["input_projection"] == 6 and model.user_tower.categorical is None
    # the buffers came back: the publisher's projection, not zeros
    expected = prepare(train_config(cfg_factory(*PROJECTED))).projection
    np.testing.assert_allclose(model.user_tower.projected.matrix.numpy(), expected.matrix, rtol=1e-5, atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any("projected" in n for n in trainable) and len(trainable) <= 4  # the linear head and the audience tower
    data = prepare(train_config(cfg_factory(*PROJECTED)))
    with torch.no_grad():
        scores = model(*data.train_features.tensors())
    assert torch.isfinite(scores).all() and scores.std() > 0
    assert json.loads((bundle / "model.json").read_text())["model"]["hidden_dims"] == []


@pytest.mark.parametrize(
    "overrides, key",
    [
        (("model=logistic", "+model.input_projection=4"), "model.input_projection"),
        ((*PROJECTED, "audit.enabled=true"), "audit.enabled"),
        (("model.input_projection=0",), "model.input_projection"),
    ],
)
def test_settings_a_projection_cannot_take_are_refused(cfg_factory, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_config(cfg_factory(*overrides))


def test_more_components_than_inputs_is_refused_before_any_charge(cfg_factory, tmp_path):
    from tests.conftest import untouched

    # age alone: its value and up to 32 bins, fewer inputs than the 64 components asked for
    cfg = cfg_factory("model.input_projection=64", "data.features={numeric:[age]}")
    with pytest.raises(ConfigError, match="model.input_projection"):
        run(cfg)
    untouched(tmp_path / "out", cfg.ledger.path)


def test_the_seed_estimate_recovers_the_training_seed_from_the_training_set_size():
    import pyarrow as pa

    from lookalike.data.matching import lay_out, split_draws
    from lookalike.training.model_rule import seed_users_estimate

    ids = pa.chunked_array([pa.array([f"u{i}" for i in range(40_000)])])
    draws = split_draws(ids, 7)
    seed = np.array([f"u{i}" for i in range(0, 40_000, 160)])  # 250 users
    for holdout in (0.0, 0.2):
        training = lay_out(ids, {"a": seed}, holdout_fraction=holdout, negative_rate=0.15, eval_negative_rate=0.05, draws=draws)
        in_range = int(((draws[:, 1] >= 0.05) & (draws[:, 1] < 0.20)).sum())
        trained_seed = int(training.train_labels.sum())
        estimate = seed_users_estimate(training.n_train, in_range, 0.15, holdout)
        # exact without a holdout; within the draws' spread of held-out users in range with one
        assert estimate == pytest.approx(trained_seed, abs=0 if holdout == 0 else 15)
    # subtracting the expected background (r P) instead is off by the draws' binomial spread
    assert abs((training.n_train - 0.15 * 40_000) - trained_seed) > abs(estimate - trained_seed)


def test_the_small_seed_rule_switches_only_below_its_threshold():
    from lookalike.model.config import ModelConfig
    from lookalike.training.model_rule import model_for_seed

    on = ModelConfig(small_seed_users=300)
    small = model_for_seed(on, 299.0, 16)
    assert (small.input_projection, small.hidden_dims, small.similarity) == (8, [], "dot")  # 8 of the 16 fitted
    # The 8-component tier's head is FEW_SEED_WIDTH wide; the 16-component tier keeps model.output_dim.
    assert [model_for_seed(ModelConfig(output_dim=20), s, 16).output_dim for s in (10.0, 299.0, 300.0, 1499.0, 1500.0)] == [256, 256, 20, 20, 20]
    assert model_for_seed(on, 300.0, 16) == on  # at the threshold: the settings as given
    assert model_for_seed(on, 10.0, None) == on  # no projection fitted (too wide, or audit)
    # Fitted by DP-SGD, on by default below 1,500 training seed users: 8 components below 300, 16 from there.
    assert [model_for_seed(ModelConfig(), s, 64).input_projection for s in (10.0, 299.0, 300.0, 1499.0, 1500.0)] == [8, 8, 16, 16, None]
    # Fitted by the seed mean, on up to model.small_seed_users (4,500), with 64 components from 1,500.
    sizes = (10.0, 299.0, 300.0, 1499.0, 1500.0, 4499.0, 4500.0)
    assert [model_for_seed(ModelConfig(), s, 64, by_mean=True).input_projection for s in sizes] == [8, 8, 16, 16, 64, 64, None]
    # Its head is at least as wide as its components (the user vector is z itself).
    assert [model_for_seed(ModelConfig(output_dim=20), s, 64, by_mean=True).output_dim for s in (10.0, 300.0, 1500.0)] == [256, 20, 64]
    assert model_for_seed(ModelConfig(), 2000.0, 40, by_mean=True).input_projection == 40  # encoded features narrower than 64
    assert model_for_seed(ModelConfig(), 700.0, 12).input_projection == 12  # encoded features narrower than 16
    assert model_for_seed(ModelConfig(small_seed_users=None), 10.0, 16) == ModelConfig(small_seed_users=None)  # null: off
    assert model_for_seed(ModelConfig(small_seed_users=300, input_projection=8), 10.0, 16).input_projection == 8  # set by hand
    assert model_for_seed(ModelConfig(kind="logistic", small_seed_users=300), 10.0, 16).kind == "logistic"


def _rule_run(cfg, out):
    """Run ``cfg``; the params it logged, and its bundle's model and meta."""
    from tests.test_train import runs_of

    run(cfg)
    (logged,) = runs_of(cfg)
    (bundle,) = sorted((out / "runs").glob("*/bundle"))
    model, _, meta = load_bundle(bundle)
    return logged.data.params, model, meta


def test_a_small_seed_run_takes_the_rules_model_and_logs_it(cfg_factory, tmp_path):
    from tests.test_train import runs_of

    # The demo's two audiences: about 190 training seed users. The size estimate at the debug
    # profile's size_epsilon (2) has a std of a few users, so the thresholds hold.
    logged, model, meta = _rule_run(
        cfg_factory("model.small_seed_users=300", "trainer.epochs=1", "privacy.target_epsilon=4", "privacy.size_epsilon=2"), tmp_path / "out"
    )
    assert (logged["model.input_projection_used"], logged["model.output_dim_used"]) == ("8", "256")
    assert meta["model"]["input_projection"] == 8 and meta["model"]["hidden_dims"] == [] and model.user_tower.categorical is None
    assert meta["model"]["output_dim"] == 256 and tuple(model.audience_tower.weight.shape) == (2, 256)  # the bundle rebuilds the wide head
    cfg = cfg_factory("model.small_seed_users=50", "trainer.epochs=1", "privacy.target_epsilon=4", "privacy.size_epsilon=2", out=tmp_path / "big")
    run(cfg)
    (logged,) = runs_of(cfg)
    assert logged.data.params["model.input_projection_used"] == "null"
    # Non-private: no noise to shrink the model for, whatever the seed's size.
    cfg = cfg_factory("model.small_seed_users=300", "trainer.epochs=1", "privacy.enabled=false", "trusted_evaluation=true", out=tmp_path / "plain")
    run(cfg)
    (logged,) = runs_of(cfg)
    assert logged.data.params["model.input_projection_used"] == "null"


def test_directions_the_inputs_cannot_vary_in_get_no_weight():
    """Five inputs, two of them sums of others (like one-hots that sum to 1, or the bins of a
    column with few values): the covariance's rank is 3, and its two other eigenvalues are
    rounding error. Their components get weight 0, not a whitening by 1 / 1e-8 that would make
    them the largest part of every user's vector."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(5000, 3)) * [1.0, 3.0, 0.5] + [2.0, -1.0, 7.0]
    x = np.column_stack([base, base[:, 0] + base[:, 1], 0.1 * base[:, 2] - base[:, 0]])
    projection = principal_projection(InputMoments(len(x), x.sum(0), x.T @ x), 5)
    norms = np.linalg.norm(projection.matrix, axis=0)
    assert (norms[:3] > 0.1).all() and (norms[:3] < 10).all() and (norms[3:] == 0).all()
    z = (x - projection.mean) @ projection.matrix
    np.testing.assert_allclose(z[:, :3].std(0), 1.0, rtol=1e-6)


def test_fewer_components_are_the_leading_ones_of_a_wider_fit():
    """The rule fits 16 components once and a run below 300 seed users reads 8 of them: the same
    projection as a fit of 8 (each component whitened on its own)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 20)) @ rng.normal(size=(20, 20)) + rng.normal(size=20)
    moments = InputMoments(len(x), x.sum(0), x.T @ x)
    wide, narrow = principal_projection(moments, 16), principal_projection(moments, 8)
    np.testing.assert_allclose(wide.leading(8).matrix, narrow.matrix, atol=1e-10)
    np.testing.assert_array_equal(wide.leading(8).mean, narrow.mean)
    assert wide.leading(16) is wide
    with pytest.raises(ValueError, match="17 components asked of a projection fitted with 16"):
        wide.leading(17)


@pytest.mark.slow  # a DP run and its bundle: make test runs it, make test-fast skips it
def test_a_run_between_the_tiers_reads_16_components(cfg_factory, tmp_path, monkeypatch):
    """The demo's ~190 training seed users with the 8-component tier moved below them: the run
    trains on the 16 fitted components, and its bundle carries that projection."""
    from lookalike.model import config as model_config

    monkeypatch.setattr(model_config, "FEW_SEED_USERS", 100)
    cfg = cfg_factory("model.small_seed_users=300", "trainer.epochs=1", "privacy.target_epsilon=4", "privacy.size_epsilon=2")
    logged, model, meta = _rule_run(cfg, tmp_path / "out")
    assert logged["model.input_projection_used"] == "16"
    assert meta["model"]["input_projection"] == 16 and tuple(model.user_tower.projected.matrix.shape)[1] == 16
    # The 16-component tier keeps the configured width (8 here), widened to its 16 components for the seed mean's fit.
    assert meta["model"]["output_dim"] == max(cfg.model.output_dim, 16) == 16 and logged["privacy.mechanism_used"] == "seed_mean"


def test_the_rule_reads_the_released_size_not_the_exact_one(cfg_factory, monkeypatch):
    import lookalike.training.run_context as run_context
    from lookalike.privacy.size_release import SizeEstimate
    from tests.test_train import runs_of

    # A release 5,000 above the truth (its noise fixed for the test): the estimate then says
    # thousands of seed users, while the exact count (about 190) would take the small-seed model.
    monkeypatch.setattr(run_context, "release_size", lambda n, epsilon, delta, matched: SizeEstimate(n + 5000, 1.0, dict(matched)))
    cfg = cfg_factory("model.small_seed_users=300", "trainer.epochs=1", "privacy.target_epsilon=4", "trusted_evaluation=true")
    run(cfg)
    (logged,) = runs_of(cfg)
    m = logged.data.metrics
    assert m["data.training_examples_dp"] == m["trusted.training_examples"] + 5000
    assert logged.data.params["model.input_projection_used"] == "null"
