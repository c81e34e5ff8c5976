"""A check both applications run on their config: outputs are kept outside the input folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.errors import ConfigError
from lookalike.privacy.ledger_store import sqlite_file


def check_outputs_outside_inputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse outputs inside an input folder: a later run would read them back as data."""
    for out_key, out in outputs.items():
        if out in (None, ""):
            continue
        file = sqlite_file(str(out))  # the path itself, or the file of a sqlite:/// URL (ledger.path)
        if file is None:  # another database's URL: nothing sits in a folder
            continue
        target = file.resolve()
        for in_key, source in inputs.items():
            if source in (None, "") or not isinstance(source, (str, Path)):
                continue
            folder = Path(str(source)).resolve()
            if folder.is_dir() and (target == folder or folder in target.parents):
                raise ConfigError(out_key, f"'{out}' is inside {in_key} '{source}': write outputs outside the input data")
