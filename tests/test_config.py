"""The Hydra config: names users type, validation before any work, and the CLI's Hydra flags."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lookalike.config_checks import validate_config
from lookalike.errors import ConfigError

USER_FACING = [
    "data.publisher_path", "data.seed_path", "data.id_column", "privacy.enabled", "privacy.target_epsilon",
    "privacy.target_delta", "privacy.max_grad_norm", "ledger.path", "ledger.budget_epsilon",
    "rules.min_matching_seed_size", "rules.min_aggregation_size", "rules.allow_list_output", "trainer.device",
    "trainer.epochs", "paths.output_dir", "mlflow.tracking_uri", "mlflow.experiment_name", "trusted_evaluation",
]


def test_user_facing_names_exist_with_defaults(cfg_factory):
    cfg = cfg_factory()
    for key in USER_FACING:
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None or key == "privacy.target_delta", key
    assert cfg.privacy.enabled is True and cfg.privacy.accountant == "prv"
    assert cfg.rules.min_aggregation_size == 100 and cfg.trusted_evaluation is False
    assert str(cfg.mlflow.tracking_uri).startswith("sqlite:///") and str(cfg.mlflow.tracking_uri).endswith("/mlflow.db")
    validate_config(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("privacy.target_epsilon=0", "privacy.target_epsilon"),
        ("privacy.target_epsilon=-1", "privacy.target_epsilon"),
        ("data.negative_rate=-0.5", "data.negative_rate"),
        ("data.negative_rate=0.8", "data.negative_rate"),
        ("rules.min_matching_seed_size=10", "rules.min_matching_seed_size"),
        ("rules.min_matching_seed_size=600000", "rules.min_matching_seed_size"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.collective_timeout_minutes=0", "trainer.collective_timeout_minutes"),
        ("privacy.accountant=gdp2", "privacy.accountant"),
        ("data.holdout_fraction=1.0", "data.holdout_fraction"),
        ("model.similarity=euclid", "model.similarity"),
        ("model.kind=forest", "model.kind"),
        ("data.non_finite=ignore", "data.non_finite"),
        ("privacy.secure_mode=true", "privacy.secure_mode"),  # torchcsprng has no build for this torch
    ],
)
def test_invalid_values_name_the_key(cfg_factory, override, key):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg_factory(override))
    assert err.value.key == key
    assert str(err.value).startswith(f"config '{key}':")


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from lookalike.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_help_and_cfg_job_work_as_in_hydra():
    helped = _cli("--help")
    assert helped.returncode == 0, helped.stderr
    assert "privacy" in helped.stdout and "experiment" in helped.stdout
    shown = _cli("--cfg", "job", "privacy.target_epsilon=1.5")
    assert shown.returncode == 0, shown.stderr
    job = OmegaConf.create(shown.stdout)
    assert job.privacy.target_epsilon == 1.5 and job.data.id_column == "user_id"
