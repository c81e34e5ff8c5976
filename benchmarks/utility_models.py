"""The three models of the utility benchmark (benchmarks/utility.py), each scoring every user of a
publisher table from a seed of user ids.

This is the ONLY benchmark module that imports lookalike internals (they are listed in
``LOOKALIKE_IMPORTS`` below); re-point them here when the package's module paths move.

- ``two_tower_scores``: the package's own training run (``lookalike.training.train.run``) with the package
  defaults, composed from the packaged Hydra config exactly as ``lookalike-train`` would. Only what
  the protocol needs is overridden: the data paths, the target epsilon (or DP off), the CPU, no
  progress bar, a fresh output folder, the repeat's seed, ``data.holdout_fraction=0`` (the seed
  file holds the training seed only: the hidden positives are known to the benchmark alone) and
  ``trusted_evaluation=true`` (the non-private run needs it; the tables are public). The run
  saves its model bundle in ``<output_dir>/runs/<stamp>/bundle``; it is loaded back and every
  publisher row is scored with it.
- ``gbm_scores``: scikit-learn's ``HistGradientBoostingClassifier`` (defaults), seed = 1 against
  every other user = 0, scoring every user.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

# ---- every lookalike import of the benchmark; nothing else in benchmarks/utility*.py imports it
from lookalike.cli.budget import main as budget_main  # `lookalike-budget` (create the owners' budget)
from lookalike.data.encode import encode  # publisher rows -> model inputs, with the bundle's feature spec
from lookalike.model.bundle import load_bundle  # a run's saved model folder -> (model, spec, meta)
from lookalike.paths import ADULT_TABLE, CONFIG_DIR  # the packaged UCI Adult table; the Hydra config folder
from lookalike.training.train import run as train_run  # one `lookalike-train` run from a composed config

LOOKALIKE_IMPORTS = (
    "lookalike.cli.budget.main",
    "lookalike.data.encode.encode",
    "lookalike.model.bundle.load_bundle",
    "lookalike.paths.ADULT_TABLE",
    "lookalike.paths.CONFIG_DIR",
    "lookalike.training.train.run",
)
ID, AUDIENCE, AUDIENCE_NAME = "user_id", "audience", "lookalike"
__all__ = ["ADULT_TABLE", "LOOKALIKE_IMPORTS", "create_budget", "gbm_scores", "two_tower_scores", "write_seed"]


def write_seed(path: Path, user_ids: list[str]) -> Path:
    """The advertiser's seed file: JSON lines with the id and one audience name."""
    path.write_text("".join(json.dumps({ID: u, AUDIENCE: AUDIENCE_NAME}) + "\n" for u in user_ids))
    return path


def create_budget(ledger: Path, publisher: Path) -> None:
    """The data owners' budget for this public table: large epsilon, exact metrics and the
    non-private baseline allowed, and the smallest allowed minimum seed size (the rule only
    refuses small seeds; it changes nothing in training). Without a budget a run is refused."""
    budget_main(
        [
            "--ledger",
            str(ledger),
            "create",
            "--publisher",
            str(publisher),
            "--id-column",
            ID,
            "--epsilon",
            "1000",
            "--if-missing",
            "--allow-trusted-evaluation",
            "--allow-non-private",
            "--min-matching-seed-size",
            "25",
        ]
    )


def two_tower_scores(
    publisher: Path, seed_file: Path, out: Path, epsilon: float | None, seed: int, extra: tuple[str, ...] | list[str] = ()
) -> tuple[np.ndarray, dict]:
    """Train the package's model on ``seed_file`` (DP at ``epsilon``, or non-private for None)
    with the package defaults; return the score of every publisher row (row order) and facts
    about the run (wall seconds, epsilon spent, steps)."""
    from hydra import compose, initialize_config_dir

    out.mkdir(parents=True, exist_ok=True)
    create_budget(out / "privacy_ledger.sqlite", publisher)
    overrides = [
        f"paths.output_dir={out}",
        f"data.publisher_path={publisher}",
        f"data.seed_path={seed_file}",
        f"data.id_column={ID}",
        f"data.audience_column={AUDIENCE}",
        "data.holdout_fraction=0",
        "trusted_evaluation=true",
        f"seed={seed}",
        "trainer.device=cpu",
        "trainer.progress_bar=false",
        f"mlflow.experiment_name=utility-{'dp' if epsilon is not None else 'nonprivate'}",
    ]
    overrides += ["privacy.enabled=false"] if epsilon is None else [f"privacy.target_epsilon={epsilon:g}"]
    overrides += list(extra)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    start = time.perf_counter()
    train_run(cfg)
    train_s = time.perf_counter() - start
    (bundle,) = sorted((out / "runs").glob("*/bundle"))  # a fresh output folder holds exactly one run
    model, spec, meta = load_bundle(bundle)
    scores = score_table(model, spec, pq.read_table(publisher))
    return scores, {
        "train_s": round(train_s, 2),
        "epsilon_spent": meta.get("privacy.epsilon_spent"),
        "steps": meta.get("privacy.steps"),
        "noise_multiplier": meta.get("privacy.noise_multiplier"),
        "sample_rate": meta.get("privacy.sample_rate"),
        "batch_size": meta.get("trainer.batch_size_used"),
        "epochs": meta.get("trainer.epochs_used"),
        "defaults": _defaults(cfg),
    }


@torch.no_grad()
def score_table(model: torch.nn.Module, spec, table: pa.Table, batch: int = 65536) -> np.ndarray:
    """The model's logit for the (only) audience, for every row of the publisher table."""
    model.eval()
    tensors = encode(table, spec).tensors()
    out = [model(*[t[i : i + batch] for t in tensors]).float()[:, 0] for i in range(0, table.num_rows, batch)]
    return torch.cat(out).numpy().astype(np.float64)


def _defaults(cfg) -> dict:
    """The settings the run used (all package defaults): recorded beside the numbers."""
    return {
        "epochs": "rule" if cfg.trainer.epochs is None else int(cfg.trainer.epochs),
        "batch_size": "rule" if cfg.trainer.batch_size is None else int(cfg.trainer.batch_size),
        "heavy_tail_log": bool(cfg.data.heavy_tail_log),
        "piecewise_linear_bins": cfg.data.piecewise_linear_bins,
        "lr": float(cfg.trainer.optimizer.lr),
        "negative_rate": float(cfg.data.negative_rate),
        "eval_negative_rate": float(cfg.data.eval_negative_rate),
        "max_grad_norm": float(cfg.privacy.max_grad_norm),
        "model": f"{cfg.model.kind} {list(cfg.model.get('hidden_dims') or [])}->{cfg.model.get('output_dim')}",
        "input_projection": cfg.model.get("input_projection"),
    }


def gbm_scores(frame, is_seed: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """HistGradientBoostingClassifier with scikit-learn's defaults on seed = 1 vs everyone else = 0.
    ``frame``: the publisher features as a pandas DataFrame (no id), strings as ``category``
    dtype, which the classifier's default ``categorical_features='from_dtype'`` treats natively."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    start = time.perf_counter()
    clf = HistGradientBoostingClassifier(random_state=seed)  # random_state: only the early-stopping split
    clf.fit(frame, is_seed.astype(int))
    scores = clf.decision_function(frame)
    return np.asarray(scores, dtype=np.float64), {"train_s": round(time.perf_counter() - start, 2), "iterations": int(clf.n_iter_)}
