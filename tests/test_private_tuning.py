"""Private hyperparameter tuning (tuning.mean_trials): the Papernot-Steinke bound, checked against
Google's dp-accounting, and a tuned run that releases one model and charges one entry."""

import math

import mlflow
import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from lookalike.errors import ConfigError, LookalikeError
from lookalike.export.job import model_uri
from lookalike.model.bundle import load_bundle
from lookalike.privacy.accounting import calibrate_noise
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.selection_bound import ORDERS, draw_trials, selection_epsilon
from lookalike.training.config import train_config
from lookalike.training.inputs import Inputs, gather_inputs
from lookalike.training.loop import TrainResult
from lookalike.training.private_tuning import TrialPlan, _check_mechanism, plan_trials, tune
from lookalike.training.train import run
from tests.conftest import untouched

TRIAL = [(2.5, 0.04, 125), (1.3, 1.0, 1)]  # DP-SGD steps and an evaluation release


def independent_epsilon(events, delta: float, mean: float, shape: float) -> float:
    trial = dp_event.ComposedDpEvent([dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), n) for s, q, n in events])
    accountant = RdpAccountant(orders=list(ORDERS))
    accountant.compose(dp_event.RepeatAndSelectDpEvent(trial, mean, shape) if mean > 1 else trial)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("mean, shape", [(1, 0), (3, 0), (4, 1), (5, 0.5), (10, 2)])
def test_the_selection_bound_matches_dp_accounting(mean, shape):
    ours = selection_epsilon(TRIAL, 1e-6, mean, shape)
    assert ours == pytest.approx(independent_epsilon(TRIAL, 1e-6, mean, shape), rel=1e-4)
    if mean > 1:  # the best of several trials costs more than one trial, far less than K of them
        single = selection_epsilon(TRIAL, 1e-6, 1, shape)
        assert single < ours < mean * single


@pytest.mark.parametrize("mean, shape", [(3, 0), (4, 1), (2.5, 0.5)])
def test_the_number_of_trials_has_its_mean_and_is_at_least_one(mean, shape):
    draws = np.array([draw_trials(mean, shape, np.random.default_rng(seed)) for seed in range(6000)])
    assert draws.min() >= 1 and abs(draws.mean() - mean) < 0.1 * mean
    assert (draws == 1).mean() < 0.7  # more than one trial happens, often


def test_the_plan_spends_what_one_run_reserves_for_training(cfg_factory):
    cfg = train_config(cfg_factory("tuning.mean_trials=4", "privacy.target_epsilon=1"))
    plan = plan_trials(cfg, examples=2000, delta=1e-6)
    # the whole search (every trial's training and reach score) fits the training epsilon, tightly
    assert 0.97 <= plan.selection_epsilon <= 1.0
    assert plan.selection_epsilon == pytest.approx(selection_epsilon(plan.events, 1e-6, 4, 0))
    assert plan.events[1] == (16.0, 1.0, 1)  # tuning.score_noise: one Gaussian count per trial
    assert plan.batch_size == 128 and plan.sample_rate == pytest.approx(1 / math.ceil(2000 / 128)) and plan.steps == 2 * math.ceil(2000 / 128)
    # each trial pays: more noise than a single run at epsilon 1, and more again with more trials
    single = calibrate_noise(1.0, 1e-6, plan.sample_rate, plan.steps, "rdp")
    assert plan.noise_multiplier > 1.2 * single
    more = plan_trials(train_config(cfg_factory("tuning.mean_trials=10", "privacy.target_epsilon=1")), 2000, 1e-6)
    assert more.noise_multiplier > plan.noise_multiplier


def test_a_trial_that_ran_another_mechanism_is_stopped():
    plan = TrialPlan(0.5, 3.0, 0.05, 100, 64, 20.0, 1.0, 2e-6)
    fine = TrainResult(model=None, steps=100, epochs=2, history=[(3.0, 0.05, 100)])  # type: ignore[arg-type]
    _check_mechanism(fine, plan)
    for history in ([(3.0, 0.06, 100)], [(2.9, 0.05, 100)], [(3.0, 0.05, 101)]):
        with pytest.raises(LookalikeError, match="tuning plan"):
            _check_mechanism(TrainResult(model=None, steps=100, epochs=2, history=history), plan)  # type: ignore[arg-type]


def test_a_tuned_run_releases_one_model_and_charges_one_entry(cfg_factory, tmp_path, caplog):
    # ~60 held-out users per audience: a large evaluation epsilon keeps the DP AUC defined
    cfg = cfg_factory(
        "tuning.mean_trials=3",
        "privacy.target_epsilon=10",
        "evaluation.epsilon=8",
        "data.holdout_fraction=0.5",
        "+tuning.space.model.small_seed_users=[null,100000]",
    )
    with caplog.at_level("INFO", logger="lookalike"):
        auc = run(cfg)
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    m, p, t = logged.data.metrics, logged.data.params, logged.data.tags
    assert t["lookalike.tuning"] == "private" and auc == m["dp.auc"] and 0 < auc <= 1
    # a training run like any other: export's model=latest finds it
    assert t["lookalike.kind"] == "train" and model_uri("latest", cfg.mlflow.experiment_name) == f"runs:/{logged.info.run_id}/model"
    # the chosen settings come from the space, and the chosen model follows them
    assert p["tuning.chosen.trainer.optimizer.lr"] in {"0.002", "0.005", "0.01"}
    assert p["tuning.chosen.privacy.max_grad_norm"] in {"0.5", "1.0", "2.0"}
    projected = p["tuning.chosen.model.small_seed_users"] == "100000"
    assert (p["model.input_projection_used"], p["model.output_dim_used"]) == (("8", "256") if projected else ("null", str(cfg.model.output_dim)))
    # one entry, the whole search at face value: within what one run reserves
    entry = Ledger(cfg.ledger.path).entry(int(t["ledger.entry_id"]))
    assert entry["status"] == "spent" and entry["events"] is None
    size_epsilon = float(cfg.privacy.size_epsilon)  # the DP size and match counts
    assert entry["spent_epsilon"] == pytest.approx(m["privacy.epsilon_spent"] + size_epsilon + 8) == pytest.approx(m["privacy.total_epsilon"])
    assert 0.97 * 10 <= m["privacy.epsilon_spent"] <= 10 and entry["reserved_epsilon"] == pytest.approx(18 + size_epsilon)
    assert m["privacy.tuning.trial_epsilon"] > 0 and m["privacy.eval_epsilon"] == m["dp.eval_epsilon"] == 8 and m["privacy.noise_multiplier"] > 0
    # nothing counts the trials: no per-epoch history, no per-epoch or per-trial log lines, one model
    assert client.get_metric_history(logged.info.run_id, "steps") == [] and client.get_metric_history(logged.info.run_id, "epsilon") == []
    assert not [r for r in caplog.records if "epoch" in r.getMessage() or "batch rule" in r.getMessage()]
    (bundle,) = sorted((tmp_path / "out" / "runs").glob("*/bundle"))
    assert not list((tmp_path / "out" / "runs").glob("*/checkpoints/*"))
    model, _, meta = load_bundle(bundle)
    assert meta["privacy.epsilon_spent"] == m["privacy.epsilon_spent"]
    assert (model.user_tower.projected is not None) == projected


@pytest.mark.parametrize(
    "overrides, key",
    [
        (("trusted_evaluation=true",), "tuning.mean_trials"),
        (("privacy.enabled=false", "trusted_evaluation=true"), "tuning.mean_trials"),
        (("data.holdout_fraction=0",), "tuning.mean_trials"),
        (("model=centroid",), "tuning.mean_trials"),
        (("+tuning.space.trainer.epochs=[1,2]",), "tuning.space.trainer.epochs"),
        (("tuning.space.trainer.optimizer.lr=[0.01,-1]",), "tuning.space.trainer.optimizer.lr"),
        (("tuning.space.privacy.max_grad_norm=[]",), "tuning.space.privacy.max_grad_norm"),
        (("tuning.shape=-1",), "tuning.shape"),
    ],
)
def test_a_search_that_cannot_be_private_is_refused_before_any_charge(cfg_factory, tmp_path, overrides, key):
    cfg = cfg_factory("tuning.mean_trials=3", *overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
    untouched(tmp_path / "out", cfg.ledger.path)


def test_too_many_trials_for_the_budget_are_refused_before_any_charge(cfg_factory, tmp_path):
    cfg = cfg_factory("tuning.mean_trials=1000", "privacy.target_epsilon=0.05")
    with pytest.raises(ConfigError, match="score releases alone"):
        run(cfg)
    untouched(tmp_path / "out", cfg.ledger.path)


def test_one_seed_user_moves_the_reach_count_by_at_most_one(demo_dir, cfg_factory, tmp_path):
    """The threshold is taken over the reference population, which a user joining the seed does
    not change (the evaluation negatives, non-seed users, would lose them)."""
    import json

    import pyarrow.dataset as ds
    import torch

    from lookalike.data.matching import split_draws
    from lookalike.model.registry import build_model
    from lookalike.training.prepare import prepare
    from lookalike.training.reach_score import reached, thresholds

    cfg = train_config(cfg_factory("tuning.mean_trials=3", "data.holdout_fraction=0.5"))
    data = prepare(cfg)
    lines = (demo_dir / "seed.jsonl").read_text().splitlines()
    # a held-out seed user inside the reference range: the case that moves both count and negatives
    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table(columns=["user_id"])
    draws = dict(zip(table.column("user_id").to_pylist(), split_draws(table.column("user_id"), int(cfg.seed))))
    rate, holdout = float(cfg.data.eval_negative_rate), float(cfg.data.holdout_fraction)
    user = next(json.loads(x)["user_id"] for x in lines if draws[json.loads(x)["user_id"]][1] < rate and draws[json.loads(x)["user_id"]][0] < holdout)
    smaller = tmp_path / "seed_minus_one.jsonl"
    smaller.write_text("\n".join(x for x in lines if json.loads(x)["user_id"] != user) + "\n")
    neighbour = prepare(train_config(cfg_factory("tuning.mean_trials=3", "data.holdout_fraction=0.5", f"data.seed_path={smaller}")))
    assert len(neighbour.eval_negative_features) == len(data.eval_negative_features) + 1
    assert len(neighbour.reference_features) == len(data.reference_features) > 0
    torch.manual_seed(0)
    model = build_model(data.spec, 2, train_config(cfg_factory()).model)
    cpu = torch.device("cpu")
    np.testing.assert_array_equal(thresholds(model, data, cpu, 0.2), thresholds(model, neighbour, cpu, 0.2))
    counts, fewer = reached(model, data, cpu, 0.2), reached(model, neighbour, cpu, 0.2)
    assert counts.sum() > 10 and 0 <= (counts - fewer).max() <= 1 and (counts - fewer).min() >= 0


def test_trials_start_from_weights_the_logged_seed_cannot_regenerate(cfg_factory, monkeypatch):
    """Trials once drew their initial weights from the generator the logged ``seed`` fixes: the
    released weights then correlated +1.000 with one regenerated trial's and told the chosen
    index, hence K >= index. Each trial now starts from OS entropy."""
    cfg = train_config(cfg_factory("tuning.mean_trials=1", "privacy.target_epsilon=4", "trainer.epochs=1"))
    starts: list[torch.Tensor] = []
    real = Inputs.build_model

    def drawn(model) -> torch.Tensor:  # the randomly initialised weights (not LayerNorm's ones, not zero biases)
        return torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.numel() > 1 and float(p.detach().std()) > 0])

    def spy(self, trial, model_cfg):
        model = real(self, trial, model_cfg)
        starts.append(drawn(model))
        return model

    firsts = []
    for _ in range(2):
        inputs = gather_inputs(cfg, None)  # seeds torch with cfg.seed, as every run does
        plan = plan_trials(cfg, 2000, inputs.delta or 0.0)
        monkeypatch.setattr(Inputs, "build_model", spy)
        firsts.append(len(starts))
        tune(cfg, inputs, 2000, 2000, plan)
        monkeypatch.undo()
    # What the logged seed regenerates: the draws a trial took before the fix.
    inputs = gather_inputs(cfg, None)
    regenerated = drawn(inputs.build_model(cfg, inputs.model_config(cfg, 2000)))
    one, two = starts[firsts[0]], starts[firsts[1]]
    assert one.shape == two.shape == regenerated.shape and one.numel() > 100
    for a, b in ((one, regenerated), (two, regenerated), (one, two)):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.3
