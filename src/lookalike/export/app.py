"""`lookalike-export`: score every publisher user with a trained model, write thresholded
segments per audience and bin, and release a report safe to share with the advertiser.

    lookalike-export export.model=<training run id> export.audience_size.bins=[1,5,10]
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import hydra
import mlflow
import pyarrow as pa
from omegaconf import DictConfig

from lookalike.data.publisher import open_publisher, schema_mismatch, window_filter
from lookalike.data.seed import read_seed
from lookalike.errors import ConfigError, DataError, LookalikeError
from lookalike.export.checks import check_model_fits_publisher, validate_export_config
from lookalike.export.output import StagedOutput, check_output_dir
from lookalike.export.release import gaussian_sigma
from lookalike.export.report import ReleasePlan, audience_report, bin_sizes, plot_report
from lookalike.export.scoring import ExportOptions, score_population
from lookalike.model.bundle import load_bundle
from lookalike.privacy.fingerprint import data_fingerprint
from lookalike.privacy.ledger import Ledger
from lookalike.quiet import silence_known_warnings
from lookalike.run_context import discard_run_directory, is_multirun, pick_device
from lookalike.tracking import download_bundle, resolve_tracking_uri, setup_experiment

log = logging.getLogger("lookalike.export")
CONFIG_DIR = str(Path(__file__).resolve().parents[3] / "configs")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(value: str, experiment_name: str) -> str:
    """A bare MLflow run id means that run's logged model; ``latest`` the newest finished
    training run of ``mlflow.experiment_name``."""
    value = str(value).strip()
    if value == "latest":
        experiment = mlflow.get_experiment_by_name(experiment_name)
        runs = [] if experiment is None else mlflow.search_runs(
            [experiment.experiment_id], "tags.`lookalike.kind` = 'train' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if not runs:
            raise ConfigError("export.model", f"'latest': experiment '{experiment_name}' has no finished training run; train first or give a run id")
        return f"runs:/{runs[0].info.run_id}/model"
    return f"runs:/{value}/model" if RUN_ID.match(value) else value


def run(cfg: DictConfig) -> dict:
    """One export. Returns the report (also written as report.json)."""
    silence_known_warnings()
    validate_export_config(cfg)
    e, out = cfg.export, Path(str(cfg.export.output_dir))
    check_output_dir(out, bool(e.overwrite))
    mlflow.set_tracking_uri(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    uri = model_uri(e.model, str(cfg.mlflow.experiment_name))
    try:
        model, spec, meta = load_bundle(download_bundle(uri))
    except LookalikeError as exc:
        raise ConfigError("export.model", str(exc)) from exc
    audiences = {a: i for i, a in enumerate(meta["audiences"])}
    if e.audiences:
        unknown = [a for a in e.audiences if a not in audiences]
        if unknown:
            raise ConfigError("export.audiences", f"'{unknown[0]}' is not an audience of model '{uri}' ({', '.join(audiences)})")
        audiences = {a: audiences[a] for a in e.audiences}

    path = str(cfg.data.publisher_path)
    dataset = open_publisher(path)
    check_model_fits_publisher(spec, dataset.schema, path, uri)
    row_filter = window_filter(dataset, cfg.data.get("window"), path)
    mismatch = schema_mismatch(dataset, spec.columns, list(dataset.get_fragments(filter=row_filter)))
    if mismatch:
        raise DataError(f"publisher data '{path}': {mismatch}")
    seeds = read_seed(cfg.data.seed_path, spec.id_column, cfg.data.audience_column)
    missing = [a for a in audiences if a not in seeds]
    if missing:
        raise ConfigError("data.seed_path", f"the seed has no audience '{missing[0]}' (it has {', '.join(seeds)}); export needs each audience's seed to exclude it")
    population = dataset.count_rows(filter=row_filter)
    kind = str(e.audience_size.type).upper()
    bins = list(e.audience_size.bins)
    sizes = bin_sizes(kind, bins, population)

    trusted = bool(cfg.trusted_evaluation)
    randomized = e.seed_exclusion == "randomized" and not e.include_seed_in_output
    plan = ReleasePlan(trusted=trusted, sigma=0.0, min_aggregation_size=int(cfg.rules.min_aggregation_size),
                       noisy_segment_sizes=e.seed_exclusion == "exact" and not e.include_seed_in_output)
    sensitivity = (len(audiences) * plan.dims_per_audience(len(bins))) ** 0.5
    if not trusted:
        plan.sigma = gaussian_sigma(float(e.report_epsilon), float(e.report_delta), sensitivity)
    epsilon = (0.0 if trusted else float(e.report_epsilon)) + (float(e.seed_exclusion_epsilon) * len(audiences) if randomized else 0.0)
    delta = 0.0 if trusted else float(e.report_delta)
    fingerprint = data_fingerprint(dataset.files, Path(path), seeds)

    ledger = Ledger(cfg.ledger.path)
    entry = None
    if epsilon > 0:
        entry = ledger.reserve(fingerprint, epsilon, delta, budget_epsilon=float(cfg.ledger.budget_epsilon),
                               budget_delta=None if cfg.ledger.budget_delta is None else float(cfg.ledger.budget_delta),
                               kind="export", description=f"lookalike-export {uri}")
    experiment_id = setup_experiment(cfg)
    try:
        experiment_id = mlflow.get_run(meta["run_id"]).info.experiment_id  # beside the training run
    except Exception:  # the model came from another tracking store
        pass
    staged, published = StagedOutput(out), False
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"export-{time.strftime('%H%M%S')}"):
            mlflow.set_tags({"lookalike.kind": "export", "lookalike.training_run_id": meta["run_id"], "lookalike.model_uri": uri,
                             "lookalike.privacy": "dp" if meta.get("private") else "non-private",
                             "lookalike.trusted_evaluation": str(trusted).lower(), "lookalike.fingerprint": fingerprint,
                             "ledger.entry_id": str(entry) if entry is not None else "none"})
            mlflow.log_params({"audience_size.type": kind, "audience_size.bins": str(bins), "seed_exclusion": e.seed_exclusion,
                               "include_seed_in_output": e.include_seed_in_output, "min_score": e.min_score,
                               "report_epsilon": e.report_epsilon, "report_delta": e.report_delta, "allow_list_output": cfg.rules.allow_list_output})
            options = ExportOptions(bool(e.include_seed_in_output), str(e.seed_exclusion), float(e.seed_exclusion_epsilon),
                                    None if e.min_score is None else float(e.min_score),
                                    float(meta.get("holdout_fraction", 0.0)), int(meta.get("split_seed", 0)))
            device = pick_device(str(cfg.get("trainer", {}).get("device", "auto")))
            start = time.perf_counter()
            state, scored = score_population(dataset, row_filter, spec, model.to(device), device, audiences,
                                             {a: pa.array(seeds[a], type=pa.string()) for a in audiences}, max(sizes), options,
                                             int(e.batch_rows), path)
            elapsed = time.perf_counter() - start
            report = _write(cfg, staged, state, population, bins, sizes, plan)
            report |= {"model": {"uri": uri, "training_run_id": meta["run_id"], "private": bool(meta.get("private"))},
                       "population": population, "audience_size": {"type": kind, "bins": bins},
                       "privacy": {"trusted": trusted, "report_epsilon": None if trusted else float(e.report_epsilon),
                                   "report_delta": None if trusted else float(e.report_delta), "noise_std": plan.sigma,
                                   "l2_sensitivity": sensitivity, "seed_exclusion": "none" if e.include_seed_in_output else e.seed_exclusion,
                                   "seed_exclusion_epsilon": float(e.seed_exclusion_epsilon) if randomized else None,
                                   "min_aggregation_size": plan.min_aggregation_size, "ledger_entry_id": entry}}
            _save_report(report, staged.stage)
            staged.publish()
            published = True
            if entry is not None:
                # The report is one Gaussian release; randomised response is not Gaussian.
                events = None if randomized else [(plan.sigma / sensitivity, 1.0, 1)]
                ledger.record_spent(entry, epsilon, events)
            mlflow.log_artifact(str(out / "report.json"))
            mlflow.log_artifact(str(out / "report.png"))
            mlflow.log_metrics({"export.users_scored": scored, "export.seconds": elapsed, "export.users_per_second": scored / max(elapsed, 1e-9),
                                "privacy.export_epsilon": epsilon})
            log.info("scored %d users in %.1f s (%.0f users/s); segments and report in %s", scored, elapsed, scored / max(elapsed, 1e-9), out)
            for name, a in report["audiences"].items():
                if a["seed_quality"]["verdict"] == "not distinctive":
                    log.warning("audience '%s': %s", name, a["seed_quality"]["detail"])
            return report
    finally:
        if not published:
            staged.discard()
            if entry is not None:
                ledger.release(entry)  # nothing left the room: the reservation goes back


def _write(cfg, staged: StagedOutput, state, population: int, bins: list, sizes: list[int], plan: ReleasePlan) -> dict:
    allow = bool(cfg.rules.allow_list_output)
    audiences = {}
    for name, st in state.items():
        _, scores, ids = st.segment.result()
        counts = [min(k, len(scores)) for k in sizes]
        # The hard rule: no user list smaller than the minimum aggregation size is written.
        written = [allow and c >= plan.min_aggregation_size for c in counts]
        for b, k, c, w in zip(bins, sizes, counts, written):
            if w:
                staged.write_segment(name, int(b) if float(b) == int(b) else b, ids.slice(0, c), scores[:c])
        audiences[name] = audience_report(st, population, bins, sizes, plan, counts, written)
    return {"audiences": audiences}


def _save_report(report: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    plot_report(report, folder / "report.png")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except LookalikeError as exc:
        print(f"lookalike-export: error: {exc}", file=sys.stderr)
        discard_run_directory()
        if not is_multirun():
            sys.exit(2)


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
