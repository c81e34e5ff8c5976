"""The small-seed model fitted by one Gaussian release (training/seed_mean_fit.py): the noise has
the calibrated std for sqrt(audiences) * clip, each seed user adds at most the clip, the release
is charged as one Gaussian step, and a run that made it cannot be resumed into DP-SGD steps."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lookalike.data.features import FeatureSpec, NumericFeature
from lookalike.errors import ConfigError
from lookalike.export.app import run as export
from lookalike.model.config import ModelConfig
from lookalike.model.registry import build_model
from lookalike.privacy.accounting import epsilon_from_history
from lookalike.privacy.ledger import Ledger
from lookalike.training import train as train_module
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.seed_mean_fit import component_clip, fit_seed_mean, noisy_seed_sums
from lookalike.training.train import run
from tests.test_export import export_cfg, seed_ids, segment
from tests.test_resume_plan import _killed_in_epoch_2
from tests.test_train import runs_of

SMALL = ("model.small_seed_users=300", "privacy.size_epsilon=2", "owner.epsilon=20")  # the demo's ~190 training seed users take the rule


def test_the_release_noise_has_the_calibrated_std_for_every_audience():
    """Zero vectors: the sums are the noise alone, std multiplier * clip * sqrt(A) (3 audiences:
    a user may be in all of them). 200 draws of 3 x 16 values: the std within 3%, 5 standard errors."""
    generator = torch.Generator().manual_seed(0)
    z, labels = torch.zeros(50, 16), torch.ones(50, 3)
    draws = torch.stack([noisy_seed_sums(z, labels, clip=4.0, noise_multiplier=2.0, generator=generator) for _ in range(200)])
    assert draws.shape == (200, 3, 16)
    assert float(draws.std()) == pytest.approx(2.0 * 4.0 * math.sqrt(3), rel=0.03)
    assert abs(float(draws.mean())) < 0.3


def test_each_seed_user_adds_at_most_the_clip_and_non_seed_users_nothing():
    """Without noise the release is the sum of the seed users' clipped vectors: a vector 100 long
    counts as ``clip``, a short one as itself, a user outside the audience not at all."""
    z = torch.tensor([[100.0, 0.0], [0.0, 1.0], [0.0, 50.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    sums = noisy_seed_sums(z, labels, clip=component_clip(4), noise_multiplier=0.0, generator=None)
    torch.testing.assert_close(sums, torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    assert component_clip(8) == pytest.approx(math.sqrt(8))


def _fitted(target_epsilon: float = 2.0, users: int = 40, audiences: int = 5, components: int = 64):
    """fit_seed_mean on a model whose projection is all zeros (every z is 0, so each audience's
    vector is its noise over its seed users, 10 each) and on ``users`` users in every seed."""
    spec = FeatureSpec(id_column="id", numeric=[NumericFeature(f"x{i}", 0.0, 1.0, False) for i in range(components + 6)])
    model = build_model(spec, audiences, ModelConfig(input_projection=components, hidden_dims=[], similarity="dot", output_dim=components))
    cfg = SimpleNamespace(privacy=SimpleNamespace(accountant="prv", target_epsilon=target_epsilon))
    tensors = [torch.randn(users, spec.numeric_width), torch.zeros(users, 0, dtype=torch.long), torch.ones(users, audiences)]
    result = fit_seed_mean(model, tensors, cfg, 1e-6, [10.0] * audiences, background=1000)
    return model, result


def test_the_fit_releases_with_the_calibrated_noise_and_not_from_the_logged_seed():
    """Through the fit: the audiences' vectors times their seed users are the noise, std
    multiplier * sqrt(components) * sqrt(audiences); the multiplier is the Gaussian mechanism's
    for the target. Two fits after the same torch.manual_seed differ (the logged seed cannot
    replay the noise)."""
    draws, multipliers = [], []
    for _ in range(20):
        torch.manual_seed(0)
        model, result = _fitted()
        draws.append(model.audience_tower.weight.detach() * 10.0)
        multipliers.append(result.noise_multiplier)
    assert len(set(multipliers)) == 1 and result.history == [(multipliers[0], 1.0, 1)] and result.steps == 1
    assert result.epsilon == pytest.approx(2.0, rel=0.01) and result.epsilon <= 2.0
    noise = torch.stack(draws)
    assert float(noise.std()) == pytest.approx(multipliers[0] * math.sqrt(64) * math.sqrt(5), rel=0.04)
    assert not torch.equal(draws[0], draws[1])
    # The score is the plug-in discriminant's log-odds: the bias -|m|^2 / 2 + log(10 / 1000).
    means = model.audience_tower.weight.detach()
    torch.testing.assert_close(model.audience_tower.bias.detach(), -0.5 * (means**2).sum(1) + math.log(10 / 1000))


def test_a_small_seed_run_fits_by_one_release_and_is_charged_for_it(cfg_factory, demo_dir, tmp_path):
    """The demo's seed under the small-seed rule: one release, not DP-SGD steps; its MLflow run,
    bundle and ledger say so, the charge composes the release with the size and evaluation
    releases, the model ranks the held-out seed users above the rest, and export ranks with it."""
    cfg = cfg_factory(*SMALL, "privacy.target_epsilon=4", "trusted_evaluation=true", out=tmp_path / "out")
    auc = run(cfg)
    (logged,) = runs_of(cfg)
    p, m = logged.data.params, logged.data.metrics
    assert (p["privacy.mechanism_used"], p["model.input_projection_used"], p["model.output_dim_used"]) == ("seed_mean", "8", "256")
    assert m["privacy.steps"] == 1 and m["privacy.sample_rate"] == 1.0
    multiplier = m["privacy.noise_multiplier"]
    delta = m["privacy.delta"]
    assert m["privacy.epsilon_spent"] == pytest.approx(epsilon_from_history([(multiplier, 1.0, 1)], delta, str(cfg.privacy.accountant)))
    assert 0.98 * 4 <= m["privacy.epsilon_spent"] <= 4 and 0.5 < multiplier < 2  # calibrated to the target, one Gaussian step
    ledger = Ledger(cfg.ledger.path)
    entry = ledger.entry(int(logged.data.tags["ledger.entry_id"]))
    assert entry["status"] == "spent" and json.loads(entry["plan"])["fit"] == "seed_mean"
    events = json.loads(entry["events"])
    assert [multiplier, 1.0, 1] in events and len(events) == 2  # the release and the size estimate (a trusted evaluation is exact)
    assert entry["spent_epsilon"] == pytest.approx(m["privacy.total_epsilon"])
    assert not list((tmp_path / "out").rglob("last.pt"))  # no steps, no checkpoint
    assert auc > 0.8  # the trusted held-out AUC (0.874-0.878 in six runs; DP-SGD's small model 0.795-0.849)
    # Export rebuilds it from the bundle and ranks the publisher's users with it.
    target = tmp_path / "segments"
    report = export(export_cfg(demo_dir, (tmp_path / "out", logged.info.run_id), target, "export.audience_size.bins=[10]"))
    for audience in ("luxury", "sports"):
        rows = segment(target, audience, 10)
        assert len(rows) == 400 and not {r["user_id"] for r in rows} & seed_ids(demo_dir, audience)
        assert 0 < rows[-1]["score"] <= rows[0]["score"] < 1 and report["audiences"][audience]["bins"][0]["relevance"] > 1.5


def test_past_many_seed_users_the_seed_mean_reads_64_components_and_dp_sgd_keeps_the_tower(cfg_factory, tmp_path, monkeypatch):
    """The demo's ~190 training seed users with the tiers moved below them (8 components under
    50, 16 under 100): the seed mean's fit reads 64 components, its head 64 wide; fitted by
    DP-SGD the rule ends at MANY_SEED_USERS and the run trains the configured tower."""
    from lookalike.model import config as model_config
    from lookalike.training import model_rule

    monkeypatch.setattr(model_config, "FEW_SEED_USERS", 50)
    monkeypatch.setattr(model_config, "MANY_SEED_USERS", 100)
    monkeypatch.setattr(model_rule, "MANY_SEED_USERS", 100)
    by_mean = cfg_factory(*SMALL, "privacy.target_epsilon=4", out=tmp_path / "mean")
    run(by_mean)
    (logged,) = runs_of(by_mean)
    p = logged.data.params
    assert (p["privacy.mechanism_used"], p["model.input_projection_used"], p["model.output_dim_used"]) == ("seed_mean", "64", "64")
    by_sgd = cfg_factory(*SMALL, "privacy.target_epsilon=4", "trainer.epochs=1", "model.small_seed_fit=dp_sgd", out=tmp_path / "sgd")
    run(by_sgd)
    (logged,) = runs_of(by_sgd)
    assert (logged.data.params["privacy.mechanism_used"], logged.data.params["model.input_projection_used"]) == ("dp_sgd", "null")


@pytest.mark.slow  # three runs: make test runs it, make test-fast skips it
def test_a_checkpoint_naming_a_seed_mean_entry_is_refused(cfg_factory, tmp_path, monkeypatch):
    """A seed-mean run stopped after its release keeps its reservation open; a checkpoint from a
    DP-SGD run, edited to name that entry, would otherwise train DP-SGD steps under it on top of
    the release, charged once. Refused in one line, the entry as it was."""
    out = tmp_path / "out"
    donor = _killed_in_epoch_2(cfg_factory(*SMALL, "model.small_seed_fit=dp_sgd", "trainer.epochs=3", out=out), out, monkeypatch)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the release, before its evaluation and record

    monkeypatch.setattr(train_module, "evaluate_holdout", stop)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_factory(*SMALL, "trainer.epochs=3", out=out))
    monkeypatch.undo()
    ledger = Ledger(out / "privacy_ledger.sqlite")
    (entry,) = [e for s in ledger.status() for e in ledger.entries(s.fingerprint) if "fit" in json.loads(e["plan"] or "{}")]
    assert entry["status"] == "reserved"
    forged = Checkpoint.load(donor)
    forged.meta["ledger_entry_id"], forged.meta["claim"] = entry["id"], entry["claim"]
    forged.save(donor)
    with pytest.raises(ConfigError, match=r"'trainer.resume_from'.*one Gaussian release.*start a fresh run"):
        run(cfg_factory(*SMALL, "trainer.epochs=3", f"trainer.resume_from={donor}", out=out))
    assert ledger.entry(entry["id"]) == entry
