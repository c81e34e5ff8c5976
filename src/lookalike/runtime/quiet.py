"""Silence third-party warnings that are understood and handled, so real ones stand out."""

from __future__ import annotations

import os
import warnings


def silence_known_warnings() -> None:
    # Opacus: we state secure_mode's trade-off in the config and docs/privacy.md.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    # Opacus' noise calibration probes RDP orders; the PRV accountant does the reporting.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    # Opacus hooks on the first layer: inputs never need gradients.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    # Opacus' functorch fallback (a tower's own layers) asks for autocast to the ids' integer dtype.
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    # Bars for MLflow artifact transfers clutter the training log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
