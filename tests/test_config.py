"""The Hydra config: names users type, validation before any work, and the CLI's Hydra flags."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lookalike.errors import ConfigError
from lookalike.training.config import train_config

USER_FACING = [
    "data.publisher_path",
    "data.seed_path",
    "data.id_column",
    "privacy.enabled",
    "privacy.target_epsilon",
    "privacy.target_delta",
    "privacy.max_grad_norm",
    "privacy.size_epsilon",
    "ledger.path",
    "rules.min_matching_seed_size",
    "rules.min_aggregation_size",
    "rules.allow_list_output",
    "trainer.device",
    "trainer.epochs",
    "paths.output_dir",
    "mlflow.tracking_uri",
    "mlflow.experiment_name",
    "trusted_evaluation",
]


def test_user_facing_names_exist_with_defaults(cfg_factory):
    cfg = cfg_factory()
    for key in USER_FACING:
        # null: the default is derived (delta) or the data owners' (rules, stored in the ledger)
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None or key == "privacy.target_delta" or key.startswith("rules."), key
    assert cfg.privacy.enabled is True and cfg.privacy.accountant == "prv"
    assert cfg.rules.min_aggregation_size is None and cfg.trusted_evaluation is False
    assert str(cfg.mlflow.tracking_uri).startswith("sqlite:///") and str(cfg.mlflow.tracking_uri).endswith("/mlflow.db")
    train_config(cfg)


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
        ("trainer.sparse_tables_from=-1", "trainer.sparse_tables_from"),
        ("trainer.table_lr=0", "trainer.table_lr"),
        ("privacy.accountant=gdp2", "privacy.accountant"),
        ("data.holdout_fraction=1.0", "data.holdout_fraction"),
        ("model.similarity=euclid", "model.similarity"),
        ("model.kind=forest", "model.kind"),
        ("data.non_finite=ignore", "data.non_finite"),
        ("data.piecewise_linear_bins=1", "data.piecewise_linear_bins"),
        ("model.input_projection=0", "model.input_projection"),
        ("privacy.secure_mode=true", "privacy.secure_mode"),  # torchcsprng has no build for this torch
        # NaN passes every comparison (charged + nan > budget is false): refused where it enters
        ("privacy.target_epsilon=nan", "privacy.target_epsilon"),
        ("privacy.target_epsilon=abc", "privacy.target_epsilon"),
        ("privacy.max_grad_norm=nan", "privacy.max_grad_norm"),
        ("privacy.size_epsilon=inf", "privacy.size_epsilon"),
        ("evaluation.epsilon=nan", "evaluation.epsilon"),
        ("rules.min_aggregation_size=nan", "rules.min_aggregation_size"),
        ("trainer.optimizer.lr=nan", "trainer.optimizer.lr"),
        # types come from the dataclasses (training/config.py and each layer's config.py)
        ("trainer.epochs=abc", "trainer.epochs"),
        ("trainer.epochs=2.5", "trainer.epochs"),
        ("model.hidden_dims=[8,x]", "model.hidden_dims[1]"),
        ("privacy.enabled=maybe", "privacy.enabled"),
        ("+trainer.epoch=3", "trainer.epoch"),  # a typo of a real key is not silently ignored
        ("seed=nan", "seed"),
    ],
)
def test_invalid_values_name_the_key(cfg_factory, override, key):
    with pytest.raises(ConfigError) as err:
        train_config(cfg_factory(override))
    assert err.value.key == key
    assert str(err.value).startswith(f"config '{key}':")


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from lookalike.training.train import cli; sys.argv = ['lookalike-train', *sys.argv[1:]]; cli()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_typed_config_is_what_library_code_gets(cfg_factory):
    from hydra.core.config_store import ConfigStore

    from lookalike.export.config import ExportConfig
    from lookalike.training.config import TrainConfig, TrainerConfig

    typed = train_config(cfg_factory("trainer.epochs=3", "model.hidden_dims=[8,4]"))
    assert isinstance(typed, TrainConfig) and isinstance(typed.trainer, TrainerConfig)
    assert typed.trainer.epochs == 3 and typed.model.hidden_dims == [8, 4] and isinstance(typed.privacy.target_epsilon, float)
    assert "${" not in typed.ledger.path  # interpolations resolved once, here
    schemas = ConfigStore.instance().repo["lookalike_schema"]
    assert schemas["train.yaml"].node._metadata.object_type is TrainConfig
    assert schemas["export.yaml"].node._metadata.object_type is ExportConfig
    built = TrainConfig()
    built.trainer.epochs = 0  # a config made in code is checked as well
    with pytest.raises(ConfigError, match="trainer.epochs"):
        train_config(built)


def test_a_wrong_type_on_the_command_line_is_one_line_naming_the_key():
    bad = _cli("trainer.epochs=abc")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]  # one line, no traceback
    assert bad.stderr.startswith("lookalike-train: error: config 'trainer.epochs':") and "abc" in bad.stderr


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_cli_help_and_cfg_job_work_as_in_hydra():
    helped = _cli("--help")
    assert helped.returncode == 0, helped.stderr
    assert "privacy" in helped.stdout and "experiment" in helped.stdout
    shown = _cli("--cfg", "job", "privacy.target_epsilon=1.5")
    assert shown.returncode == 0, shown.stderr
    job = OmegaConf.create(shown.stdout)
    assert job.privacy.target_epsilon == 1.5 and job.data.id_column == "user_id"


def test_runs_started_in_the_same_second_get_their_own_folders():
    from hydra import compose, initialize_config_dir

    from lookalike.training.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hydra_cfg = compose(config_name="train", return_hydra_config=True).hydra
    # the time stamp alone is shared within a second: an id of the process follows it
    assert re.fullmatch(r".*/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{8}", str(hydra_cfg.run.dir))
    assert hydra_cfg.output_subdir is None  # no .hydra/ copies holding a ledger URL's password
    show = "import lookalike.runtime.resolvers; from omegaconf import OmegaConf; c = OmegaConf.create({'a': '${run_id:}', 'b': '${run_id:}'}); print(c.a, c.b)"
    first, second = (subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, timeout=60).stdout.split() for _ in range(2))
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0] and len(first[0]) == 8


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_runs_opening_a_fresh_mlflow_store_at_once(tmp_path):
    """Of five such runs, four died in the store's schema migrations (alembic tracebacks); three
    show it as well."""
    code = (
        "from lookalike.runtime.config import MlflowConfig; from lookalike.runtime.tracking import setup_experiment; "
        f"print(setup_experiment(MlflowConfig(tracking_uri='sqlite:///{tmp_path}/mlflow.db', experiment_name='x', "
        f"artifact_location='{tmp_path}/art')))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, outs[0][1][-2000:]
    assert len({o.strip() for o, _ in outs}) == 1  # one experiment, the same id for all


def test_an_experiment_sets_both_commands_and_each_reads_its_own_sections():
    from hydra import compose, initialize_config_dir

    from lookalike.export.config import export_config
    from lookalike.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        shown = compose(config_name="export", overrides=["experiment=adult", "export.model=abc123"], return_hydra_config=True)
        trained = compose(config_name="train", overrides=["experiment=adult", "+export.report_epsilon=0.3"], return_hydra_config=True)
    assert "privacy" in shown and export_config(shown).export.model == "abc123"  # training's sections left out
    assert train_config(trained).trainer.epochs == 10
    with pytest.raises(ConfigError) as err:  # a section neither command has is still refused
        export_config(OmegaConf.create({"export": {"model": "x"}, "privacy_typo": {}}))
    assert err.value.key == "privacy_typo"
