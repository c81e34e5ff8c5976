"""privacy.mechanism=label_rr: the flip rate its epsilon calls for, a training population that no
seed user changes, the spend in the ledger and MLflow, and the settings it refuses."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from mlflow.tracking import MlflowClient

from lookalike.data.matching import lay_out, split_draws
from lookalike.errors import ConfigError
from lookalike.privacy.label_rr import flip_probability, randomized_labels
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import resolve_tracking_uri
from lookalike.training import label_rr_fit
from lookalike.training import train as train_module
from lookalike.training.config import train_config
from lookalike.training.train import run
from tests.conftest import untouched

KW = dict(holdout_fraction=0.3, negative_rate=0.7, eval_negative_rate=0.2)


@pytest.mark.parametrize("audiences, epsilon", [(1, 1.0), (3, 1.0), (2, 4.0)])
def test_each_label_flips_at_the_rate_its_share_of_epsilon_calls_for(audiences, epsilon):
    """p = 1 / (1 + e^(epsilon / k)) per label, so that a user who joins the seed in all k
    audiences moves the output's odds by at most e^epsilon. Measured on 400,000 labels of each
    value: the bounds sit 5 standard errors out, and the rate of k = 1 is within 0.003 of the
    k = 3 one's only if the split by k is dropped (caught)."""
    users = 400_000 // audiences
    exact = np.zeros((2 * users, audiences), dtype=np.float32)
    exact[users:] = 1.0
    flipped = randomized_labels(exact, epsilon).numpy()
    p = 1 / (1 + math.exp(epsilon / audiences))
    assert flip_probability(epsilon, audiences) == pytest.approx(p)
    standard_error = math.sqrt(p * (1 - p) / (users * audiences))
    for value in (0.0, 1.0):
        rows = exact[:, 0] == value
        rate = float((flipped[rows] != exact[rows]).mean())
        assert abs(rate - p) < 5 * standard_error, (value, rate, p)
    assert set(np.unique(flipped)) == {0.0, 1.0}
    # independent across a user's audiences: both labels of a user flip at p^2, not p
    if audiences > 1:
        both = float(((flipped[:, 0] != exact[:, 0]) & (flipped[:, 1] != exact[:, 1])).mean())
        assert abs(both - p * p) < 5 * math.sqrt(p * p / (users * 2)), (both, p * p)


def test_the_flips_come_from_os_entropy_not_the_seed():
    exact = np.zeros((20_000, 1), dtype=np.float32)
    torch.manual_seed(0)
    one = randomized_labels(exact, 1.0)
    torch.manual_seed(0)
    two = randomized_labels(exact, 1.0)
    assert not torch.equal(one, two)


def test_bad_labels_and_epsilon_are_refused():
    with pytest.raises(ValueError, match="0 or 1"):
        randomized_labels(np.array([[0.5]], dtype=np.float32), 1.0)
    with pytest.raises(ValueError, match="epsilon > 0"):
        flip_probability(0.0, 1)


def population(ids: pa.Array, seeds: dict, draws: np.ndarray) -> dict[str, tuple]:
    ts = lay_out(ids, seeds, draws=draws, population_labels=True, **KW)
    users = np.asarray(ids.to_pylist(), dtype=object)[ts.train_rows]
    return {u: tuple(label) for u, label in zip(users, ts.train_labels.tolist())}


def test_joining_the_seed_changes_one_users_labels_and_no_row():
    """The relation randomised response is DP for: the same users train whoever is in the seed;
    one user joining changes that user's own labels only (and a user in the hold-out range,
    seed or not, never trains)."""
    ids = pa.array([f"u{i}" for i in range(3000)])
    draws = split_draws(ids, 7)
    base = {"a": np.array([f"u{i}" for i in range(0, 3000, 5)], dtype=object), "b": np.array([f"u{i}" for i in range(0, 3000, 7)], dtype=object)}
    before = population(ids, base, draws)
    held = draws[:, 0] < KW["holdout_fraction"]
    in_range = (draws[:, 1] >= KW["eval_negative_rate"]) & (draws[:, 1] < KW["eval_negative_rate"] + KW["negative_rate"])
    assert set(before) == {f"u{i}" for i in np.flatnonzero(~held & in_range)}
    assert sum(label[0] for label in before.values()) > 0  # seed users train as 1s, the rest as 0s
    changed = 0
    for i in range(1, 600, 5):
        user = f"u{i}"
        after = population(ids, {"a": np.sort(np.append(base["a"], user)), "b": base["b"]}, draws)
        assert after.keys() == before.keys(), user
        moved = {u for u in before if before[u] != after[u]}
        assert moved == ({user} if user in before else set()), user
        changed += bool(moved)
    assert changed > 20


def runs_of(cfg) -> list:
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_label_rr_run_trains_every_user_and_charges_its_epsilon(cfg_factory, fixed_entropy, monkeypatch):
    seen: dict[str, torch.Tensor] = {}

    def passing_through(module, name, key):
        real = getattr(module, name)

        def spy(model, tensors, *args, **kwargs):
            seen[key] = tensors[-1].clone()
            return real(model, tensors, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    # What the run's data hands to label_rr, and what label_rr hands to the plain loop: the labels.
    passing_through(train_module, "fit_label_rr", "exact")
    passing_through(label_rr_fit, "train", "trained")
    cfg = cfg_factory("privacy.mechanism=label_rr", "privacy.target_epsilon=4", "evaluation.epsilon=50", "trainer.epochs=3", "owner.epsilon=100")
    typed = train_config(cfg)
    assert typed.data.negative_rate == pytest.approx(1 - typed.data.eval_negative_rate)
    auc = run(cfg)
    (logged,) = runs_of(cfg)
    m, p, t = logged.data.metrics, logged.data.params, logged.data.tags
    assert p["privacy.mechanism"] == "label_rr" and t["privacy.mechanism"] == "label_rr" and t["lookalike.privacy"] == "dp"
    assert float(p["data.negative_rate"]) == pytest.approx(1 - typed.data.eval_negative_rate)
    assert m["privacy.epsilon_spent"] == 4 and m["privacy.delta"] == 0 and m["privacy.noise_multiplier"] == 0
    assert m["privacy.flip_probability"] == pytest.approx(1 / (1 + math.exp(4 / 2)))  # the demo's two audiences
    assert p["privacy.grad_sample_mode_used"] == "none" and m["trainer.batch_size_used"] == 128
    # every user outside the evaluation and hold-out ranges trains: thousands of plain steps' worth
    assert m["privacy.steps"] >= 3 * (4000 * 0.5 // 128)
    entry = Ledger(cfg.ledger.path).entry(int(t["ledger.entry_id"]))
    size_epsilon = float(cfg.privacy.size_epsilon)
    assert entry["status"] == "spent" and entry["spent_epsilon"] == pytest.approx(4 + size_epsilon + 50)
    assert entry["reserved_epsilon"] == pytest.approx(4 + size_epsilon + 50)
    assert auc == m["dp.auc"] and auc > 0.6  # the demo's signal survives flips at p = 0.12
    # the loop trained on flipped labels, at the rate epsilon calls for (5 standard errors)
    exact, trained = seen["exact"], seen["trained"]
    assert exact.shape == trained.shape and exact.sum() > 100
    p = m["privacy.flip_probability"]
    rate = float((exact != trained).float().mean())
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / exact.numel()), (rate, p)


@pytest.mark.parametrize(
    "setting, key",
    [
        ("audit=one_run", "audit.enabled"),
        ("model=centroid", "model.kind"),
        ("tuning.mean_trials=2", "tuning.mean_trials"),
        ("trainer.resume_from=/nonexistent/last.pt", "trainer.resume_from"),
    ],
)
def test_what_would_draw_the_labels_again_or_needs_dp_sgd_is_refused(cfg_factory, tmp_path, setting, key):
    cfg = cfg_factory("privacy.mechanism=label_rr", setting)
    with pytest.raises(ConfigError, match=rf"'{key}'.*label_rr"):
        run(cfg)
    untouched(tmp_path / "out", cfg.ledger.path)
