"""Hydra callback that groups a multirun sweep in MLflow and ends it with a summary.

Before the first trial it checks that the privacy budget covers at least the cheapest trial (a
sweep no trial of which can run refuses in one line; training/sweep_budget.py). Each trial's MLflow run becomes a child of one parent run
(``mlflow.parentRunId``). Trials the ledger refuses return NaN, which Optuna records as failed;
at the end the parent run gets the counts and the best trial, and the log says the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lookalike.errors import LookalikeError
from lookalike.privacy.budget_match import find_budget
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.live_runs import owner_tags
from lookalike.runtime.tracking import setup_experiment
from lookalike.training.config import train_config
from lookalike.training.prepare import data_users
from lookalike.training.sweep_budget import cheapest_trial_epsilon

log = logging.getLogger("lookalike.training.sweep")
PARENT_ENV = "LOOKALIKE_PARENT_RUN_ID"
OUTCOMES = ".trial_outcomes"  # under hydra.sweep.dir


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            typed = train_config(config)
            # the cheapest trial, not the multirun's own config: that holds none of the swept values
            needed = cheapest_trial_epsilon(config, typed)
            ledger = Ledger(typed.ledger.path)
            fits, remaining = ledger.runs_that_fit(find_budget(ledger, data_users(typed)).fingerprint, needed)
            if fits == 0:
                raise LookalikeError(
                    f"privacy budget in ledger '{ledger.path}' covers no trial of this sweep: "
                    f"the cheapest trial needs epsilon {needed:.3g}, {remaining:.3g} remains (lookalike-budget preview --epsilon {needed:.3g})"
                )
            log.info("sweep: the cheapest trial reserves epsilon %.3g; the budget covers at most %d more", needed, fits)
            experiment_id = setup_experiment(typed.mlflow)
        except LookalikeError as exc:
            print(f"lookalike-train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        run = MlflowClient().create_run(experiment_id, run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", tags={"lookalike.kind": "sweep"} | owner_tags())
        self.parent = run.info.run_id
        os.environ[PARENT_ENV] = self.parent  # read by each trial (also in launcher subprocesses)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # Parallel launchers (joblib, submitit) call this in the trial's own process or node, so
        # the outcome goes to a file in the sweep folder, which every launcher shares. Hydra
        # calls it after single runs too: those are no trials.
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            value = float(job_return.return_value)
        except Exception:  # a trial that raised or was refused: counted as failed
            value = float("nan")
        outcomes = Path(str(config.hydra.sweep.dir)) / OUTCOMES
        outcomes.mkdir(parents=True, exist_ok=True)
        (outcomes / f"{config.hydra.job.num}.json").write_text(json.dumps({"value": None if math.isnan(value) else value}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        client = MlflowClient()
        children = client.search_runs(
            [client.get_run(self.parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent}' and attributes.status = 'FINISHED'"
        )
        outcomes = [json.loads(p.read_text())["value"] for p in (Path(str(config.hydra.sweep.dir)) / OUTCOMES).glob("*.json")]
        done = [v for v in outcomes if v is not None]
        refused = len(outcomes) - len(done)
        best = max(done) if done else float("nan")
        client.log_metric(self.parent, "sweep.trials_finished", len(children))
        client.log_metric(self.parent, "sweep.trials_refused_or_failed", refused)
        if done:
            client.log_metric(self.parent, "sweep.best_value", best)
        client.set_terminated(self.parent)
        os.environ.pop(PARENT_ENV, None)
        log.info(
            "sweep summary: %d trials finished, %d refused or failed (a refused trial charged nothing); best held-out AUC %s; parent MLflow run %s",
            len(children),
            refused,
            f"{best:.4f}" if done else "none",
            self.parent,
        )
