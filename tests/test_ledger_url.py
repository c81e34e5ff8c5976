"""The ledger behind a SQLAlchemy URL: the same ledger as the file, passwords never shown,
unusable URLs refused in one line naming ledger.path (racing processes: test_ledger.py)."""

from __future__ import annotations

import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.errors import BudgetExceededError, ConfigError
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import without_password
from lookalike.runtime.tracking import flat_params
from lookalike.training.config import TrainConfig
from tests.conftest import reserve_on

FP = "a" * 64


def reserve(ledger: Ledger, eps: float, budget: float = 3.5) -> int:
    return reserve_on(ledger, FP, eps, 1e-6, budget=budget, budget_delta=None, kind="train", description="t")


def test_a_url_and_a_path_name_the_same_ledger(tmp_path, capsys):
    file = tmp_path / "shared" / "ledger.sqlite"
    by_url = Ledger(f"sqlite:///{file}")
    first = reserve(by_url, 2.0)
    by_url.record_spent(first, 1.5, [(1.2, 0.01, 300)])
    (status,) = Ledger(file).status()
    assert status.spent_epsilon == 1.5 and status.runs == 1 and status.charged_epsilon <= 1.5
    with pytest.raises(BudgetExceededError, match="this run needs epsilon 3"):
        reserve(Ledger(file), 3.0)
    budget_main(["--ledger", f"sqlite:///{file}", "--json"])
    assert '"spent_epsilon": 1.5' in capsys.readouterr().out


def test_passwords_are_never_shown_or_logged():
    url = "postgresql+psycopg://alice:s3cret@db.example:5432/ledger"
    assert Ledger(url).path == "postgresql+psycopg://alice:***@db.example:5432/ledger"
    cfg = TrainConfig()
    cfg.ledger.path, cfg.mlflow.tracking_uri = url, "https://bob:pw@mlflow.example"
    params = flat_params(cfg)
    assert "s3cret" not in str(params) and "pw@" not in str(params) and "alice" in params["ledger.path"]
    # a password holding '@' or '/', and secrets passed as query parameters
    assert without_password("postgresql+psycopg://alice:p@ss/w@db:5432/ledger") == "postgresql+psycopg://alice:***@db:5432/ledger"
    assert without_password("postgresql://bob@db/ledger?sslpassword=hunter2&sslmode=require&api_token=t0k") == (
        "postgresql://bob@db/ledger?sslpassword=***&sslmode=require&api_token=***"
    )


@pytest.mark.parametrize("url", ["nosuchdialect://x/y", "postgresql+nosuchdriver://u@localhost/ledger"])
def test_an_unusable_url_is_one_config_error(url):
    with pytest.raises(ConfigError, match="ledger.path") as err:
        reserve(Ledger(url), 1.0)
    assert "\n" not in str(err.value)


def test_training_with_a_url_ledger_tags_the_url(cfg_factory, tmp_path):
    from mlflow.tracking import MlflowClient

    from lookalike.training.train import run

    location = f"sqlite:///{tmp_path / 'team' / 'ledger.sqlite'}"
    cfg = cfg_factory("privacy.target_epsilon=1.0", "trusted_evaluation=true", f"ledger.path={location}")
    run(cfg)
    (status,) = Ledger(location).status()
    assert 0 < status.spent_epsilon <= 1.0 + cfg.privacy.size_epsilon  # training + the size estimate (trusted metrics are free)
    client = MlflowClient(f"sqlite:///{cfg.paths.output_dir}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("lookalike").experiment_id])
    assert logged.data.tags["ledger.path"] == location and not (tmp_path / "out" / "privacy_ledger.sqlite").exists()
