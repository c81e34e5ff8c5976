"""Read the advertiser's seed audiences: JSON lines, CSV or Parquet with an id column.

``data.seed_path`` may be one file (all one audience, or split by ``data.audience_column``),
a list of files (one audience per file, named by the file stem) or a mapping name -> file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from lookalike.data.features import is_text
from lookalike.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "seed"
# Audience names become folder names in exports (audience=<name>/) and MLflow keys: letters,
# digits, '_', '-' and '.', starting with a letter or digit, so no name can climb out of a folder.
AUDIENCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_audience_name(name: str, where: str) -> str:
    """Refuse a name that is not a plain, safe identifier (``..``, ``/``, spaces, empty)."""
    if not isinstance(name, str) or not AUDIENCE_NAME.fullmatch(name) or ".." in name:
        raise DataError(f"{where}: audience name {name!r} is not allowed; use letters, digits, '_', '-' or '.' (up to 128, no '..')")
    return name


def seed_files(seed_path: Any) -> dict[str | None, Path]:
    """Map audience name (None: take names from the audience column) to seed file."""
    if seed_path is None or seed_path == "":
        raise ConfigError("data.seed_path", "is not set: point it at the advertiser's seed file(s)")
    if isinstance(seed_path, (str, Path)):
        return {None: Path(seed_path)}
    if isinstance(seed_path, Mapping):
        return {str(k): Path(v) for k, v in seed_path.items()}
    paths = [Path(p) for p in seed_path]
    names = [p.stem.split(".")[0] for p in paths]
    if len(set(names)) != len(names):
        raise ConfigError("data.seed_path", "two seed files share a name; use a mapping audience -> file instead")
    return dict(zip(names, paths))


def read_seed(seed_path: Any, id_column: str, audience_column: str) -> dict[str, np.ndarray]:
    """Audience name -> sorted unique seed ids (strings)."""
    audiences: dict[str, np.ndarray] = {}
    for name, path in seed_files(seed_path).items():
        table = _read_table(path, id_column, audience_column)
        ids = table.column(id_column)
        if name is None and audience_column in table.column_names:
            groups = table.column(audience_column).cast(pa.string())
            if groups.null_count:
                raise DataError(f"seed file '{path}': column '{audience_column}' has empty values; every row needs an audience")
            for group in pc.unique(groups).to_pylist():
                audiences[group] = _unique_ids(ids.filter(pc.equal(groups, group)), path, id_column)
        else:
            audiences[DEFAULT_AUDIENCE if name is None else name] = _unique_ids(ids, path, id_column)
    for name in audiences:
        check_audience_name(name, f"seed '{seed_path}'")
    return dict(sorted(audiences.items()))


def _read_table(path: Path, id_column: str, audience_column: str) -> pa.Table:
    if not path.is_file():
        raise DataError(f"seed file '{path}' does not exist: set data.seed_path to the advertiser's seed file")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith((".jsonl", ".json", ".ndjson")):
            # Ids are read as strings on purpose: "00123" must not become 123.
            schema = pa.schema([(id_column, pa.string()), (audience_column, pa.string())])
            options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            table = pajson.read_json(path, parse_options=options)
            if table.column(audience_column).null_count == table.num_rows:
                table = table.drop_columns([audience_column])  # plain {"user_id": ...} lines
        elif suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            convert = pacsv.ConvertOptions(column_types={id_column: pa.string(), audience_column: pa.string()}, strings_can_be_null=True)
            parse = pacsv.ParseOptions(delimiter="\t" if suffixes.endswith(".tsv") else ",")
            table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        elif suffixes.endswith((".parquet", ".pq")):
            table = pq.read_table(path)
        else:
            raise DataError(f"seed file '{path}': unknown format; use .jsonl, .csv or .parquet")
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"seed file '{path}' could not be read ({first}): ids must be strings under '{id_column}'") from exc
    if id_column not in table.column_names:
        raise DataError(f"seed file '{path}' has no '{id_column}' column: rename it or set data.id_column")
    if not is_text(table.schema.field(id_column).type):
        raise DataError(f"seed file '{path}': column '{id_column}' has type {table.schema.field(id_column).type}: store ids as strings")
    return table


def _unique_ids(ids: pa.ChunkedArray, path: Path, id_column: str) -> np.ndarray:
    # Ids match exactly; normalise both sides first with `lookalike-hash` where formats differ.
    values = ids.drop_null()
    values = values.filter(pc.not_equal(values, ""))
    if len(values) < len(ids):
        # Said, never counted: the number of dropped rows is seed-derived.
        log.warning("seed file '%s': rows with an empty '%s' were dropped", path, id_column)
    unique = np.unique(np.asarray(values.to_numpy(zero_copy_only=False), dtype=object))
    if unique.size == 0:
        raise DataError(f"seed file '{path}' has no ids in column '{id_column}': the seed is empty")
    return unique
