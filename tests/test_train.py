"""End to end on real data, a real SQLite MLflow store and a real ledger: what a run logs,
what it spends, and what export will load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pyarrow.dataset as ds
import pytest
from mlflow.tracking import MlflowClient

from lookalike.errors import BudgetExceededError, ConfigError
from lookalike.model.bundle import load_bundle
from lookalike.privacy.accounting import epsilon_from_history
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import download_bundle, resolve_tracking_uri
from lookalike.training.train import run


def runs_of(cfg) -> list:
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_dp_run_logs_privacy_spend_params_and_a_loadable_model(cfg_factory, demo_dir):
    # The tiny test data holds ~25 held-out users per audience: a large evaluation epsilon keeps
    # the DP estimate defined (at 0.2 the noisy positive count can fall below zero).
    cfg = cfg_factory("privacy.target_epsilon=2.0", "evaluation.epsilon=50", "owner.epsilon=100")
    auc = run(cfg)
    (logged,) = runs_of(cfg)
    m, p, t = logged.data.metrics, logged.data.params, logged.data.tags
    assert 0 < m["privacy.epsilon_spent"] <= 2.0 and m["privacy.target_epsilon"] == 2.0
    # delta from the public row count, the sample rate from the DP estimate of the training-set
    # size: nothing logged encodes the exact (seed-derived) size
    assert m["privacy.delta"] == pytest.approx(1 / (10 * 4000)) and "data.training_examples" not in m
    assert m["privacy.sample_rate"] == pytest.approx(1 / math.ceil(m["data.training_examples_dp"] / 128))
    assert m["privacy.noise_multiplier"] > 0 and 0 < m["privacy.sample_rate"] < 1 and m["privacy.steps"] > 0
    assert m["scan.rows_scanned"] == 4000 and m["scan.bytes_scanned"] > 0 and m["scan.files_scanned"] == 4
    assert p["privacy.target_epsilon"] == "2.0" and p["data.id_column"] == "user_id" and p["model.similarity"] == "cosine"
    assert p["trainer.table_route"] == "dense"  # the demo's tables are far below trainer.sparse_tables_from
    assert t["lookalike.privacy"] == "dp" and t["privacy.accountant"] == "prv" and t["lookalike.trusted_evaluation"] == "false"
    # outside trusted mode no exact seed-derived number is logged: held-out metrics are DP
    assert not [k for k in m if k.startswith("trusted.") or "loss" in k]
    # the model at epsilon 2 on 4,000 users is weak: its held-out AUC has been seen at 0.497
    assert auc == m["dp.auc"] and 0.35 < auc <= 1 and {"dp.luxury.auc", "dp.sports.recall_at_20pct", "dp.sports.lift_at_20pct"} <= set(m)
    assert m["dp.noise_std"] > 0 and m["dp.eval_epsilon"] == m["privacy.eval_epsilon"] == 50
    # the ledger entry named on the run was closed with exactly the logged epsilon (training +
    # size estimate + evaluation)
    entry = Ledger(cfg.ledger.path).entry(int(t["ledger.entry_id"]))
    size_epsilon = float(cfg.privacy.size_epsilon)  # the DP size and match counts
    assert entry["status"] == "spent" and entry["spent_epsilon"] == pytest.approx(m["privacy.epsilon_spent"] + size_epsilon + 50)
    assert entry["reserved_epsilon"] == pytest.approx(52 + size_epsilon) and m["privacy.total_epsilon"] <= 52 + size_epsilon
    assert "lookalike.seed_fingerprint" not in t  # a hash of the seed ids would confirm a guessed seed
    # MLflow's dataset column: the publisher table (path, users' digest, feature schema), never the seed
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (used,) = client.get_run(logged.info.run_id).inputs.dataset_inputs
    assert used.dataset.name == "publisher" and used.dataset.digest == t["lookalike.users"][:16] and [i.key for i in used.tags] == ["mlflow.data.context"]
    assert {c["name"] for c in json.loads(used.dataset.schema)["mlflow_colspec"]} >= {"age", "device", "interests"}
    assert entry["fingerprint"] == t["lookalike.fingerprint"]
    # the model comes back as a bundle export can rebuild, and as an MLflow pyfunc
    model_uri = t["lookalike.model_uri"]
    scorer = mlflow.pyfunc.load_model(model_uri)
    users = ds.dataset(demo_dir / "publisher", partitioning="hive").head(5).to_pandas()
    scores = scorer.predict(users)
    assert list(scores.columns) == ["luxury", "sports"] and scores.shape == (5, 2)
    assert ((scores.to_numpy() > 0) & (scores.to_numpy() < 1)).all()
    model, spec, meta = load_bundle(download_bundle(model_uri))
    assert meta["private"] is True and meta["audiences"] == ["luxury", "sports"] and meta["run_id"] == logged.info.run_id
    assert spec.id_column == "user_id" and {f.name for f in spec.multi_categorical} == {"interests"}


def test_reported_epsilon_equals_a_fresh_accountant_for_the_steps_taken(cfg_factory):
    cfg = cfg_factory("privacy.target_epsilon=1.0", "privacy.accountant=rdp", "trainer.epochs=3")
    run(cfg)
    (logged,) = runs_of(cfg)
    m = logged.data.metrics
    summary = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=logged.info.run_id, artifact_path="privacy_summary.json")).read_text())
    history = [tuple(h) for h in summary["history"]]
    assert sum(h[2] for h in history) == m["privacy.steps"]
    assert all(h[0] == pytest.approx(m["privacy.noise_multiplier"]) and h[1] == pytest.approx(m["privacy.sample_rate"]) for h in history)
    # from the logged (sigma, q, steps, delta) alone
    recomputed = epsilon_from_history([(m["privacy.noise_multiplier"], m["privacy.sample_rate"], int(m["privacy.steps"]))], m["privacy.delta"], "rdp")
    assert recomputed == pytest.approx(m["privacy.epsilon_spent"], rel=1e-9)
    assert m["privacy.epsilon_spent"] <= 1.0
    epochs = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri))).get_metric_history(logged.info.run_id, "epsilon")
    assert [e.step for e in epochs] == [1, 2, 3] and epochs[0].value < epochs[1].value < epochs[2].value == pytest.approx(m["privacy.epsilon_spent"])


def test_trusted_mode_beats_random_ranking_and_tags_the_run(cfg_factory, fixed_entropy):
    cfg = cfg_factory("trusted_evaluation=true", "trainer.epochs=4", "privacy.target_epsilon=4")
    auc = run(cfg)
    (logged,) = runs_of(cfg)
    m = logged.data.metrics
    assert logged.data.tags["lookalike.trusted_evaluation"] == "true"
    assert auc == pytest.approx(m["trusted.auc"]) and auc > 0.65  # random ranking: 0.5 (runs gave 0.69-0.76)
    assert m["trusted.luxury.matched_seed_users"] > 25 and "train_loss" in m and "dp.auc" not in m
    assert Ledger(cfg.ledger.path).status()[0].spent_epsilon <= 4.0 + cfg.privacy.size_epsilon  # training + size estimate; trusted metrics cost nothing


def test_second_run_is_refused_once_the_budget_is_spent(cfg_factory):
    cfg = cfg_factory("privacy.target_epsilon=1.0", "owner.epsilon=4")
    run(cfg)
    before = Ledger(cfg.ledger.path).status()
    # 1 + 2 (the debug profile's size release) + 0.2; the finished run composes to less than 3.2
    with pytest.raises(BudgetExceededError, match=r"needs epsilon 3.2 but only [0-2]\.\d+ of 4 remains \(composition of 1 finished"):
        run(cfg)
    assert len(runs_of(cfg)) == 1 and Ledger(cfg.ledger.path).status() == before


def test_non_private_baseline_needs_trusted_mode_and_is_tagged(cfg_factory):
    with pytest.raises(ConfigError, match="privacy.enabled"):
        run(cfg_factory("privacy.enabled=false"))
    cfg = cfg_factory("privacy.enabled=false", "trusted_evaluation=true")
    run(cfg)
    (logged,) = runs_of(cfg)
    assert logged.data.tags["lookalike.privacy"] == "non-private" and logged.info.run_name.startswith("NON-PRIVATE")
    assert "privacy.epsilon_spent" not in logged.data.metrics and logged.data.tags["ledger.entry_id"] == "none"
    assert Ledger(cfg.ledger.path).status()[0].runs == 0


def test_logistic_baseline_trains_with_dp_and_round_trips(cfg_factory, fixed_entropy):
    cfg = cfg_factory("model=logistic", "trusted_evaluation=true", "trainer.epochs=3", "privacy.target_epsilon=4")
    auc = run(cfg)
    (logged,) = runs_of(cfg)
    assert auc > 0.6 and logged.data.params["model.kind"] == "logistic" and "-logistic-" in logged.info.run_name
    model, _, meta = load_bundle(download_bundle(logged.data.tags["lookalike.model_uri"]))
    assert type(model).__name__ == "LogisticRegression" and meta["model"]["kind"] == "logistic"


def test_centroid_baseline_is_one_gaussian_release(cfg_factory):
    cfg = cfg_factory("model=centroid", "trusted_evaluation=true", "privacy.target_epsilon=2")
    auc = run(cfg)
    (logged,) = runs_of(cfg)
    m = logged.data.metrics
    assert auc > 0.55 and m["privacy.steps"] == 1 and m["privacy.sample_rate"] == 1.0
    assert 0.99 * 2 <= m["privacy.epsilon_spent"] <= 2.0
    assert m["privacy.epsilon_spent"] == pytest.approx(epsilon_from_history([(m["privacy.noise_multiplier"], 1.0, 1)], m["privacy.delta"], "prv"))
    model, _, meta = load_bundle(download_bundle(logged.data.tags["lookalike.model_uri"]))
    assert type(model).__name__ == "CentroidSimilarity" and meta["model"]["kind"] == "centroid"
