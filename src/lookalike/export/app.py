"""`lookalike-export`: score every publisher user with a trained model, write thresholded
segments per audience and bin, and release a report safe to share with the advertiser.

    lookalike-export export.model=<training run id> export.audience_size.bins=[1,5,10]
    lookalike-export export.shard.index=0 export.shard.count=2 ...   # then export.shard.merge=true
    torchrun --nproc_per_node=2 -m lookalike.export.app ...            # ranks = shards, rank 0 merges
"""

from __future__ import annotations

import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import hydra
import mlflow
from omegaconf import DictConfig

import lookalike.runtime.resolvers  # noqa: F401  (registers ${run_id:} before Hydra composes)
from lookalike.errors import BudgetExceededError, LookalikeError, no_space_left
from lookalike.export.config import ExportConfig, export_config
from lookalike.export.job import ExportJob, Scored, plan_export, score, score_batches_of
from lookalike.export.output import StagedOutput, check_output_dir
from lookalike.export.report import ReleasePlan, audience_report, plot_report
from lookalike.export.shards import load_parts, remove_parts, save_part
from lookalike.parallel.world import barrier, finish, world_from_env
from lookalike.paths import CONFIG_DIR
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.ledger_store import mask_urls
from lookalike.runtime.credentials import check_command_line
from lookalike.runtime.live_runs import start_run
from lookalike.runtime.quiet import silence_known_warnings
from lookalike.runtime.runs import check_run_folder, discard_run_directory, is_multirun
from lookalike.runtime.tracking import setup_experiment

log = logging.getLogger("lookalike.export")


def run(cfg: ExportConfig | DictConfig) -> dict:
    """One export, or one shard of it, or the merge of its shards. Returns the report (also
    written as report.json), or for a shard a summary of its part."""
    silence_known_warnings()
    cfg = export_config(cfg)
    shard, out = cfg.export.shard, Path(str(cfg.export.output_dir))
    world = world_from_env(shard.collective_timeout_minutes)
    if shard.merge or shard.index is None:  # whoever writes the segments; under torchrun every rank, alike
        check_output_dir(out, bool(cfg.export.overwrite), protected_paths(cfg))
    # Only whoever releases reads the seed: a shard scores everyone alike (see shards.py).
    releases = world.primary if world is not None else shard.merge or shard.index is None
    job = plan_export(cfg, read_seed=releases)
    parts = Path(str(shard.parts_dir))
    if world is not None:  # torchrun: the ranks are the shards, rank 0 merges and releases
        check_budget(job)
        save_part(job, score_batches_of(job, (world.rank, world.size)), world.rank, world.size, parts)
        barrier()
        try:
            return release(job, lambda: load_parts(job, parts), merged_from=parts) if world.primary else {"rank": world.rank}
        finally:
            barrier()
            finish()
    if shard.merge:
        return release(job, lambda: load_parts(job, parts), merged_from=parts)
    if shard.index is not None:
        check_budget(job)  # refuse before scoring, not only at the merge
        index, count = shard.index, shard.count or 1  # ShardConfig sets count with index
        part = save_part(job, score_batches_of(job, (index, count)), index, count, parts)
        log.info("shard %s of %s scored; part in %s (merge with export.shard.merge=true)", index, count, part)
        return {"shard": index, "part": str(part)}
    return release(job, lambda: score(job))


def protected_paths(cfg: ExportConfig) -> dict[str, str]:
    """What an export folder must never hold: the inputs, the ledger, the MLflow store, the runs."""
    from lookalike.data.seed import seed_files
    from lookalike.privacy.ledger_store import sqlite_file

    kept = {"data.publisher_path": str(cfg.data.publisher_path), "paths.output_dir": str(cfg.paths.output_dir)}
    kept |= {f"data.seed_path ({name or 'seed'})": str(file) for name, file in seed_files(cfg.data.seed_path).items()}
    for key, location in (("ledger.path", str(cfg.ledger.path)), ("mlflow.tracking_uri", str(cfg.mlflow.tracking_uri))):
        try:
            file = sqlite_file(location)  # a file path or sqlite:/// URL; None for a server
        except Exception:
            file = None
        if file is not None:
            kept[key] = str(file)
    return kept


def check_budget(job: ExportJob) -> None:
    """Read-only: would the ledger cover this export's release now?"""
    if job.epsilon > 0:
        ledger = Ledger(job.cfg.ledger.path)
        fits, remaining = ledger.runs_that_fit(job.fingerprint, job.epsilon)
        if fits < 1:
            raise BudgetExceededError(
                f"privacy budget in ledger '{ledger.path}' for data {job.fingerprint[:12]}: this export needs "
                f"epsilon {job.epsilon:.3g} but only {remaining:.3g} remains; lower export.report_epsilon"
            )


def release(job: ExportJob, produce: Callable[[], Scored], merged_from: Path | None = None) -> dict:
    """Reserve the release's epsilon, score (or merge), write segments and report, charge."""
    cfg, e, out = job.cfg, job.cfg.export, Path(str(job.cfg.export.output_dir))
    trusted, plan = bool(cfg.trusted_evaluation), job.plan
    ledger = Ledger(cfg.ledger.path)
    # MLflow first: an unreachable tracking server must fail before anything is reserved.
    experiment_id = setup_experiment(cfg.mlflow)
    staged: StagedOutput | None = None
    published, entry = False, None
    # A full disk while staging: one line; the finally below discards the stage and gives the reservation back.
    full = partial(no_space_left, f"export.output_dir '{out}'", "free space there or choose another folder; nothing was published and nothing charged")
    try:
        # The staging folder first (and the abandoned ones beside it cleared): a problem there
        # fails before the reservation, and a refused reservation discards the stage.
        with full():
            staged = StagedOutput(out, bool(e.overwrite))  # its marker is a write too
        if job.epsilon > 0:
            entry = ledger.reserve(
                job.fingerprint,
                job.epsilon,
                job.delta,
                kind="export",
                description=f"lookalike-export {job.uri}",
                attach=job.budget.new_snapshot,
                also=job.budget.also,
            )
        try:
            experiment_id = mlflow.get_run(job.meta["run_id"]).info.experiment_id  # beside the training run
        except Exception:  # the model came from another tracking store
            pass
        with start_run(experiment_id=experiment_id, run_name=f"export-{time.strftime('%H%M%S')}"):
            mlflow.set_tags(
                {
                    "lookalike.kind": "export",
                    "lookalike.training_run_id": job.meta["run_id"],
                    "lookalike.model_uri": job.uri,
                    "lookalike.privacy": "dp" if job.private else "non-private",
                    "lookalike.trusted_evaluation": str(trusted).lower(),
                    "lookalike.fingerprint": job.fingerprint,
                    "ledger.entry_id": str(entry) if entry is not None else "none",
                    "lookalike.sharded": "true" if merged_from is not None else "false",
                }
            )
            mlflow.log_params(
                {
                    "audience_size.type": job.kind,
                    "audience_size.bins": str(job.bins),
                    "seed_exclusion": e.seed_exclusion,
                    "include_seed_in_output": e.include_seed_in_output,
                    "min_score": e.min_score,
                    "report_epsilon": e.report_epsilon,
                    "report_delta": job.delta,
                    "allow_list_output": job.rules.allow_list_output,
                    "min_aggregation_size": job.rules.min_aggregation_size,
                }
            )
            scored = produce()
            with full():
                report = _write(job.rules.allow_list_output, staged, scored.state, job.population, job.bins, job.sizes, plan)
            report |= {
                "model": {"uri": job.uri, "training_run_id": job.meta["run_id"], "private": job.private},
                "population": job.population,
                "audience_size": {"type": job.kind, "bins": job.bins},
                "privacy": {
                    "trusted": trusted,
                    "report_epsilon": None if trusted else float(e.report_epsilon),
                    "report_delta": None if trusted else job.delta,
                    "noise_std": plan.sigma,
                    "l2_sensitivity": job.sensitivity,
                    "seed_exclusion": "none" if e.include_seed_in_output else e.seed_exclusion,
                    "seed_exclusion_epsilon": float(e.seed_exclusion_epsilon) if job.randomized else None,
                    "min_aggregation_size": plan.min_aggregation_size,
                    "ledger_entry_id": entry,
                },
            }
            with full():
                _save_report(report, staged.stage)
                staged.publish()
            published = True
            if entry is not None:
                # The report is one Gaussian release; randomised response is not Gaussian.
                events = None if job.randomized else [(plan.sigma / job.sensitivity, 1.0, 1)]
                ledger.record_spent(entry, job.epsilon, events)
            if merged_from is not None:
                remove_parts(merged_from)  # intermediates: not needed once released
            mlflow.log_artifact(str(out / "report.json"))
            mlflow.log_artifact(str(out / "report.png"))
            rate = scored.users / max(scored.seconds, 1e-9)
            mlflow.log_metrics(
                {"export.users_scored": scored.users, "export.seconds": scored.seconds, "export.users_per_second": rate, "privacy.export_epsilon": job.epsilon}
            )
            log.info("scored %d users in %.1f s (%.0f users/s); segments and report in %s", scored.users, scored.seconds, rate, out)
            for name, a in report["audiences"].items():
                if a["held_out_seed_users"] is None and all(b["segment_size"] is None and b["recall"] is None for b in a["bins"]):
                    # The suppression was decided on the noisy counts, so it is a release too: charged.
                    log.warning(
                        "audience '%s': every count in the report was suppressed (below rules.min_aggregation_size); the "
                        "report's epsilon is charged all the same",
                        name,
                    )
                if a["seed_quality"]["verdict"] == "not distinctive":
                    log.warning("audience '%s': %s", name, a["seed_quality"]["detail"])
            return report
    finally:
        if not published:
            if staged is not None:
                staged.discard()
            if entry is not None:
                ledger.release(entry)  # nothing left the room: the reservation goes back


def _write(allow: bool, staged: StagedOutput, state, population: int, bins: list, sizes: list[int], plan: ReleasePlan) -> dict:
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
        check_run_folder(cfg)
        run(cfg)
    except LookalikeError as exc:
        print(f"lookalike-export: error: {mask_urls(str(exc))}", file=sys.stderr)
        discard_run_directory()
        if not is_multirun():
            sys.exit(2)


def cli() -> None:
    check_command_line("lookalike-export")  # before Hydra, whose parse errors echo an argument
    main()


if __name__ == "__main__":
    cli()
