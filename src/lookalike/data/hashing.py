"""`lookalike-hash`: normalise and salt-hash identifiers, so raw ids need not be shared.

Both parties run the same command with the same secret salt; matching then works on hashes.
Normalisation: trim whitespace; emails lowercased; phone numbers reduced to digits (and a
leading +). The salt comes from an environment variable or a file, never the command line
(where it would land in shell history).

    LOOKALIKE_SALT=... lookalike-hash seed.csv seed_hashed.csv --column user_id --kind email
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from lookalike.errors import DataError, LookalikeError

KINDS = ("auto", "email", "phone", "id")
_NOT_PHONE = re.compile(r"[^0-9]")


def normalise(value: str, kind: str) -> str:
    value = value.strip()
    if kind == "email" or (kind == "auto" and "@" in value):
        return value.lower()
    if kind == "phone":
        return ("+" if value.startswith("+") else "") + _NOT_PHONE.sub("", value)
    return value


def hash_id(value: str, salt: bytes, kind: str = "auto") -> str:
    """Salted SHA-256 (HMAC, so the salt cannot be peeled off by length extension)."""
    return hmac.new(salt, normalise(value, kind).encode("utf-8"), hashlib.sha256).hexdigest()


def hash_column(values: pa.Array | pa.ChunkedArray, salt: bytes, kind: str = "auto") -> pa.Array:
    return pa.array([None if v is None else hash_id(v, salt, kind) for v in values.to_pylist()], type=pa.string())


def read_salt(env: str, salt_file: Path | None) -> bytes:
    if salt_file is not None:
        if not salt_file.is_file():
            raise LookalikeError(f"salt file '{salt_file}' does not exist")
        salt = salt_file.read_bytes().strip()
    else:
        salt = os.environ.get(env, "").encode()
    if len(salt) < 16:
        raise LookalikeError(f"the salt must be at least 16 bytes: set ${env} or pass --salt-file (both parties use the same salt)")
    return salt


def hash_file(source: Path, target: Path, column: str, salt: bytes, kind: str) -> int:
    """Hash ``column`` of a CSV, JSON-lines or Parquet file into ``target`` (same format)."""
    if not source.is_file():
        raise DataError(f"input file '{source}' does not exist")
    suffix = source.suffix.lower()
    text_id = {column: pa.string()}
    if suffix == ".csv":
        table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(column_types=text_id))
    elif suffix in (".jsonl", ".json", ".ndjson"):
        table = pajson.read_json(source)
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(source)
    else:
        raise DataError(f"input file '{source}': unknown format; use .csv, .jsonl or .parquet")
    if column not in table.column_names:
        raise DataError(f"input file '{source}' has no column '{column}': pass --column")
    hashed = hash_column(table.column(column).cast(pa.string()), salt, kind)
    table = table.set_column(table.column_names.index(column), column, hashed)
    tmp = target.with_name(target.name + ".tmp")
    if suffix == ".csv":
        pacsv.write_csv(table, tmp)
    elif suffix == ".parquet" or suffix == ".pq":
        pq.write_table(table, tmp)
    else:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    tmp.replace(target)  # never leave a half-written output
    return table.num_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lookalike-hash", description="Normalise and salt-hash an id column.")
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--column", default="user_id")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="normalisation (auto: emails lowercased)")
    parser.add_argument("--salt-env", default="LOOKALIKE_SALT", help="environment variable holding the salt")
    parser.add_argument("--salt-file", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        n = hash_file(args.input, args.output, args.column, read_salt(args.salt_env, args.salt_file), args.kind)
    except LookalikeError as exc:
        print(f"lookalike-hash: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"hashed {n} rows of '{args.column}' into {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
