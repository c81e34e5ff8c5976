"""Everything an export decides before it scores anyone: the model, the publisher data and its
window, the seeds, the bins and their sizes, the release plan and its privacy cost.

Every process of a sharded export builds the same job from the same config, so the shards and
the merge agree on model, audiences and fingerprint without talking to each other. A shard plans
without the seed (``read_seed=False``): it scores every user alike and must not depend on it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import torch

from lookalike.data.publisher import open_publisher, schema_mismatch, window_filter
from lookalike.data.publisher_ids import scan_users
from lookalike.data.seed import check_audience_name, read_seed
from lookalike.errors import ConfigError, DataError, LookalikeError
from lookalike.export.checks import check_model_fits_publisher
from lookalike.export.config import ExportConfig
from lookalike.export.report import ReleasePlan, bin_sizes
from lookalike.export.scoring import AudienceScores, ExportOptions, Tally, score_batches, score_population
from lookalike.model.bundle import weights_digest
from lookalike.privacy.accounting import release_delta
from lookalike.privacy.budget_match import BudgetMatch, find_budget
from lookalike.privacy.fingerprint import merge_parts
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.mechanisms import gaussian_sigma
from lookalike.privacy.rules import Rules, check_release_deltas, check_run_allowed, check_seed_in_output, effective_rules
from lookalike.runtime.runs import pick_device
from lookalike.runtime.tracking import load_logged_model, resolve_tracking_uri

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(value: str, experiment_name: str) -> str:
    """A bare MLflow run id means that run's logged model; ``latest`` the newest finished
    training run of ``mlflow.experiment_name``."""
    value = str(value).strip()
    if value == "latest":
        experiment = mlflow.get_experiment_by_name(experiment_name)
        runs = (
            []
            if experiment is None
            else mlflow.search_runs(
                [experiment.experiment_id],
                "tags.`lookalike.kind` = 'train' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
                output_format="list",
            )
        )
        if not runs:
            raise ConfigError("export.model", f"'latest': experiment '{experiment_name}' has no finished training run; train first or give a run id")
        return f"runs:/{runs[0].info.run_id}/model"
    return f"runs:/{value}/model" if RUN_ID.match(value) else value


@dataclass
class ExportJob:
    cfg: ExportConfig
    uri: str
    model: torch.nn.Module
    spec: Any
    meta: dict
    audiences: dict[str, int]  # audience -> the model's output column
    dataset: Any
    row_filter: Any
    path: str
    seeds: dict[str, np.ndarray] | None  # None: planned for a shard, which reads no seed
    population: int
    kind: str
    bins: list
    sizes: list[int]
    plan: ReleasePlan
    sensitivity: float
    randomized: bool
    epsilon: float
    delta: float
    budget: BudgetMatch
    rules: Rules
    options: ExportOptions
    private: bool  # a DP run of this ledger released the model (its entry says so, not its files)

    @property
    def fingerprint(self) -> str:
        return self.budget.fingerprint


@dataclass
class Scored:
    state: dict[str, AudienceScores]
    users: int
    seconds: float


def released_privately(ledger: Ledger, model: torch.nn.Module, fingerprint: str, uri: str) -> bool:
    """Whether the ledger holds the DP training run that released this model, on this budget.
    A model no entry released (a non-private run, or weights edited since) is non-private; the
    model's own metadata is a file the operator can edit, so it decides nothing."""
    entry = ledger.released_model(weights_digest(model))
    if entry is not None and entry["fingerprint"] != fingerprint:
        raise ConfigError(
            "export.model",
            f"'{uri}' was trained under budget {entry['fingerprint'][:12]} of ledger '{ledger.path}', not this publisher data's "
            f"budget {fingerprint[:12]}: export it on the data it was trained on",
        )
    return entry is not None


def plan_export(cfg: ExportConfig, read_seed: bool = True) -> ExportJob:
    e = cfg.export
    mlflow.set_tracking_uri(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    uri = model_uri(str(e.model), cfg.mlflow.experiment_name)
    try:
        model, spec, meta = load_logged_model(uri, "export.model")
    except LookalikeError as exc:
        if isinstance(exc, ConfigError) and exc.key == "export.model":  # the room refused its tower's code
            raise
        raise ConfigError("export.model", str(exc)) from exc
    audiences = {check_audience_name(a, f"model '{uri}'"): i for i, a in enumerate(meta["audiences"])}
    if e.audiences:
        unknown = [a for a in e.audiences if a not in audiences]
        if unknown:
            raise ConfigError("export.audiences", f"'{unknown[0]}' is not an audience of model '{uri}' ({', '.join(audiences)})")
        audiences = {a: audiences[a] for a in e.audiences}

    path = str(cfg.data.publisher_path)
    dataset = open_publisher(path)
    check_model_fits_publisher(spec, dataset.schema, path, uri)
    row_filter = window_filter(dataset, cfg.data.window, path)
    mismatch = schema_mismatch(dataset, spec.columns, list(dataset.get_fragments(filter=row_filter)))
    if mismatch:
        raise DataError(f"publisher data '{path}': {mismatch}")
    seeds = _read_seeds(cfg, spec.id_column, audiences) if read_seed else None
    users = merge_parts([scan_users(dataset, spec.id_column, row_filter, path)])  # streamed: never every id at once
    population = users.users
    # The owners' budget and rules for these users, before anything is scored or reserved.
    trusted = bool(cfg.trusted_evaluation)
    ledger = Ledger(cfg.ledger.path)
    budget = find_budget(ledger, users)
    del users
    rules = effective_rules(budget.rules, cfg.rules, ledger.path)
    private = released_privately(ledger, model, budget.fingerprint, uri)
    check_run_allowed(rules, private=private, trusted=trusted, epsilon=0.0, where=ledger.path)
    check_seed_in_output(rules, bool(e.include_seed_in_output), ledger.path)
    kind, bins = str(e.audience_size.type).upper(), list(e.audience_size.bins)
    sizes = bin_sizes(kind, bins, population)

    randomized = e.seed_exclusion == "randomized" and not e.include_seed_in_output
    plan = ReleasePlan(
        trusted=trusted,
        sigma=0.0,
        min_aggregation_size=rules.min_aggregation_size,
        noisy_segment_sizes=e.seed_exclusion == "exact" and not e.include_seed_in_output,
    )
    sensitivity = (len(audiences) * plan.dims_per_audience(len(bins))) ** 0.5
    report_delta = release_delta(e.report_delta, 1e-6, population)
    if not trusted:
        check_release_deltas(rules, population, {"export.report_delta": report_delta}, ledger.path)
        plan.sigma = gaussian_sigma(float(e.report_epsilon), report_delta, sensitivity)
    epsilon = (0.0 if trusted else float(e.report_epsilon)) + (float(e.seed_exclusion_epsilon) * len(audiences) if randomized else 0.0)
    check_run_allowed(rules, private=True, trusted=False, epsilon=epsilon, where=ledger.path)
    options = ExportOptions(
        bool(e.include_seed_in_output),
        str(e.seed_exclusion),
        float(e.seed_exclusion_epsilon),
        None if e.min_score is None else float(e.min_score),
        float(meta.get("holdout_fraction", 0.0)),
        int(meta.get("split_seed", 0)),
    )
    return ExportJob(
        cfg,
        uri,
        model,
        spec,
        meta,
        audiences,
        dataset,
        row_filter,
        path,
        seeds,
        population,
        kind,
        bins,
        sizes,
        plan,
        sensitivity,
        randomized,
        epsilon,
        0.0 if trusted else report_delta,
        budget,
        rules,
        options,
        private,
    )


def _read_seeds(cfg: ExportConfig, id_column: str, audiences: dict[str, int]) -> dict[str, np.ndarray]:
    seeds = read_seed(cfg.data.seed_path, id_column, cfg.data.audience_column)
    missing = [a for a in audiences if a not in seeds]
    if missing:
        raise ConfigError(
            "data.seed_path", f"the seed has no audience '{missing[0]}' (it has {', '.join(seeds)}); export needs each audience's seed to exclude it"
        )
    return seeds


def tally(job: ExportJob) -> Tally:
    """The seed-dependent state a release is computed from, empty."""
    assert job.seeds is not None, "a shard's job has no seed: only the release tallies"
    return Tally(job.audiences, job.seeds, max(job.sizes), job.options)


def score_batches_of(job: ExportJob, shard: tuple[int, int] | None = None):
    """Ids and scores of every user (or of shard ``(index, count)`` of the row groups)."""
    device = pick_device(str(job.cfg.export.device), "export.device")
    model = job.model.to(device)
    return score_batches(job.dataset, job.row_filter, job.spec, model, device, job.audiences, int(job.cfg.export.batch_rows), job.path, shard)


def score(job: ExportJob) -> Scored:
    """The single-process export: score the whole population and tally it in one pass."""
    assert job.seeds is not None, "a shard's job has no seed: only the release tallies"
    device = pick_device(str(job.cfg.export.device), "export.device")
    start = time.perf_counter()
    k, rows = max(job.sizes), int(job.cfg.export.batch_rows)
    state, users = score_population(
        job.dataset, job.row_filter, job.spec, job.model.to(device), device, job.audiences, job.seeds, k, job.options, rows, job.path
    )
    return Scored(state, users, time.perf_counter() - start)
