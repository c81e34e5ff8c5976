"""What a resumed run may change: the plan its ledger entry holds, checked against the settings.

A resume continues a reservation the ledger made for one plan: more epochs, another epsilon or
another delta would spend beyond it. The checkpoint only names the entry; whatever else it says
(settings, noise, size) is a file the operator can edit, so the plan and the size estimate come
from the ledger, and every refusal here comes before a step, charging nothing more.
"""

from __future__ import annotations

import json
from typing import Any

from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.size_release import SizeEstimate
from lookalike.runtime.tracking import flat_params
from lookalike.training.checkpoint import Checkpoint

# Settings that cannot change what a run releases: where it logs and writes, how it shows
# progress, on which device and in what memory-sized pieces it computes. A resume may change
# these and nothing else; every other setting is the plan its ledger entry holds.
RESUME_FREE = {"trainer.resume_from", "trainer.progress_bar", "trainer.device", "trainer.physical_batch_size", "trainer.collective_timeout_minutes"}
RESUME_FREE_SECTIONS = ("mlflow.", "paths.", "ledger.")


# Settings added with randomised response and the small-seed mean: an entry planned before them
# was DP-SGD, and a resume (which takes neither, training/mechanism_rule.py and seed_mean_fit.py)
# continues it whatever they say.
SINCE_DP_SGD_ONLY = {"privacy.mechanism", "privacy.label_rr_users", "model.small_seed_fit"}

# A run by any other mechanism released once and wrote no checkpoint to go on from.
NOT_RESUMABLE = {
    "label_rr": "trained by randomised response on the labels, which does not resume (its labels were drawn once)",
    "seed_mean": "released its small-seed model in one Gaussian release (model.small_seed_fit=seed_mean), which does not resume",
}


def run_plan(cfg: Any) -> dict[str, str]:
    """The settings a reservation covers: everything but :data:`RESUME_FREE`, as logged."""
    return {key: value for key, value in flat_params(cfg).items() if key not in RESUME_FREE and not key.startswith(RESUME_FREE_SECTIONS)}


def resumable_entry(ledger: Ledger, resume: Checkpoint, mine: dict[str, str], fingerprint: str) -> tuple[dict, SizeEstimate | None]:
    """The ledger entry ``resume`` names and the size estimate it released, once the entry is
    shown to be a DP-SGD run still reserved, on budget ``fingerprint``, planned as ``mine``."""
    entry = ledger.entry(int(resume.meta.get("ledger_entry_id") or 0))
    planned = json.loads(entry["plan"]) if entry.get("plan") else {}
    settings = planned.get("settings")
    if settings is None:
        raise LookalikeError(f"ledger entry {entry['id']} holds no plan (written by an older version): its run cannot be resumed; start a fresh run")
    for key in sorted(set(settings) | set(mine)):
        if key in SINCE_DP_SGD_ONLY and key not in settings:
            continue  # planned before the setting existed: a DP-SGD run, which a resume stays
        if settings.get(key) != mine.get(key):
            raise ConfigError(
                key,
                f"is {mine.get(key)} but the run's ledger entry {entry['id']} planned {settings.get(key)}: a resumed run keeps its plan, "
                "which its ledger reservation covers; resume with the original settings",
            )
    mechanism = planned.get("fit", planned.get("mechanism", "dp_sgd"))  # fit: the small-seed rule's choice, after the counts
    if mechanism != "dp_sgd":
        # Training again would release again (the labels drawn again, the sums noised again), uncharged.
        why = NOT_RESUMABLE.get(mechanism, f"used mechanism {mechanism}, which does not resume")
        raise ConfigError("trainer.resume_from", f"ledger entry {entry['id']} {why}: start a fresh run")
    if entry["status"] != "reserved":
        raise LookalikeError(f"checkpoint's ledger entry {entry['id']} is already {entry['status']}: a finished run cannot be resumed")
    if planned.get("size") is None:
        # Every run that trained released its DP counts first: without them a resume would
        # sample at the exact (seed-derived) size. A checkpoint naming such an entry is forged.
        raise LookalikeError(f"ledger entry {entry['id']} released no size estimate: no run trained under it, so there is nothing to resume")
    if entry["fingerprint"] != fingerprint:
        raise ConfigError("trainer.resume_from", "the checkpoint's reservation is on another budget; resume with the same data")
    return entry, SizeEstimate(**planned["size"])
