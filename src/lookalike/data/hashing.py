"""`lookalike-hash`: normalise and salt-hash identifiers, so raw ids need not be shared.

Both parties run the same command with the same secret salt; matching then works on hashes.
Normalisation: trim whitespace; emails lowercased; phone numbers reduced to digits (and a
leading +). The salt comes from an environment variable or a file, never the command line
(where it would land in shell history).

    LOOKALIKE_SALT=... lookalike-hash seed.csv seed_hashed.csv --column user_id --kind email
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import json
import os
import re
import sys
from pathlib import Path

import pyarrow as pa
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
    """Hash ``column`` of a CSV, JSON-lines or Parquet file into ``target`` (same format). Every
    other value passes through as it was: CSV and JSON lines are read as text, never typed (a
    zip code 01234 stays 01234, a timestamp stays its string), and Parquet keeps its schema."""
    if not source.is_file():
        raise DataError(f"input file '{source}' does not exist")
    suffix = source.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".ndjson", ".parquet", ".pq"):
        raise DataError(f"input file '{source}': unknown format; use .csv, .jsonl or .parquet")
    tmp = target.with_name(target.name + ".tmp")
    try:
        if suffix == ".csv":
            rows = _hash_csv(source, tmp, column, salt, kind)
        elif suffix in (".parquet", ".pq"):
            table = pq.read_table(source)
            if column not in table.column_names:
                raise DataError(f"input file '{source}' has no column '{column}': pass --column")
            values = table.column(column).cast(pa.string())
            _refuse_blank(values.to_pylist(), source, column)
            pq.write_table(table.set_column(table.column_names.index(column), column, hash_column(values, salt, kind)), tmp)
            rows = table.num_rows
        else:
            rows = _hash_jsonl(source, tmp, column, salt, kind)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)  # never leave a half-written output
    return rows


def _refuse_blank(values: list, source: Path, column: str, first_row: int = 1) -> None:
    for i, value in enumerate(values):
        if value is None or not str(value).strip():
            raise DataError(
                f"input file '{source}': row {first_row + i} has an empty '{column}'; drop such rows first (an empty id would hash to a valid-looking id)"
            )


def _hash_csv(source: Path, tmp: Path, column: str, salt: bytes, kind: str) -> int:
    with open(source, newline="", encoding="utf-8-sig") as inp, open(tmp, "w", newline="", encoding="utf-8") as out:
        reader = csv.reader(inp)
        header = next(reader, None)
        if header is None or column not in header:
            raise DataError(f"input file '{source}' has no column '{column}': pass --column")
        at, writer, rows = header.index(column), csv.writer(out, lineterminator="\n"), 0
        writer.writerow(header)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue  # a blank line
            _refuse_blank([row[at] if at < len(row) else None], source, column, line)
            row[at] = hash_id(row[at], salt, kind)
            writer.writerow(row)
            rows += 1
    return rows


def _hash_jsonl(source: Path, tmp: Path, column: str, salt: bytes, kind: str) -> int:
    """Each line as text, like a CSV row: only the id's value is replaced. Decoding the line and
    encoding it again retyped every other field (1.10 became 1.1, 1e2 100.0, 1E400 Infinity, which
    is not JSON) and hashed a numeric id 0.10 as "0.1"."""
    # newline="": a line keeps its own ending (\r\n stays \r\n).
    with open(source, encoding="utf-8-sig", newline="") as inp, open(tmp, "w", encoding="utf-8", newline="") as out:
        rows = 0
        for line, text in enumerate(inp, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"input file '{source}': line {line} is not JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or column not in record:
                raise DataError(f"input file '{source}': line {line} has no '{column}': pass --column")
            spans = _value_spans(text, column)
            if len(spans) > 1:  # json.loads keeps the last; another reader may take the first
                raise DataError(f"input file '{source}': line {line} has '{column}' {len(spans)} times; keep one")
            at, end = spans[0]
            value = _id_text(text[at:end])
            if value is _NOT_AN_ID:
                raise DataError(f"input file '{source}': line {line}: '{column}' is {text[at:end][:40]}, not a string or a number")
            _refuse_blank([value], source, column, line)
            text = text[:at] + json.dumps(hash_id(str(value), salt, kind)) + text[end:]
            out.write(text if text.endswith("\n") else text + "\n")
            rows += 1
    return rows


_DECODER = json.JSONDecoder()
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NOT_AN_ID = object()


def _value_spans(text: str, key: str) -> list[tuple[int, int]]:
    """Where ``key``'s values sit in ``text``, a JSON object already checked by ``json.loads``."""
    spans, at = [], _skip(text, _skip(text, 0) + 1)  # past the '{'
    while text[at] != "}":
        name, at = _DECODER.raw_decode(text, at)  # a key is a JSON string
        at = _skip(text, _skip(text, at) + 1)  # past the ':'
        end = _DECODER.raw_decode(text, at)[1]
        if name == key:
            spans.append((at, end))
        at = _skip(text, end)
        if text[at] == ",":
            at = _skip(text, at + 1)
    return spans


def _skip(text: str, at: int) -> int:
    """The first position from ``at`` that is not JSON whitespace."""
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _id_text(raw: str) -> object:
    """The id a JSON value stands for: a string's text, a number as written (0.10 stays 0.10, as
    in a CSV); None for null; _NOT_AN_ID for anything else."""
    if raw.startswith('"'):
        return json.loads(raw)
    if _NUMBER.fullmatch(raw):
        return raw
    return None if raw == "null" else _NOT_AN_ID


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
