"""Scan the publisher's Parquet data: projection, a training window, partition pruning, scan cost.

Clean rooms bill by what a job scans, so every scan reports rows and (compressed) bytes read for
the projected columns of the fragments that survive partition pruning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from lookalike.data.config import WindowConfig
from lookalike.data.features import is_text
from lookalike.data.row_group_shares import rank_share
from lookalike.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanStats:
    """What a scan cost: files and rows in the pruned fragments, and compressed bytes projected."""

    files_scanned: int
    rows_scanned: int
    bytes_scanned: int
    rows_in_window: int


def open_publisher(path: str | Path) -> ds.Dataset:
    """Open a Parquet file or a directory of Parquet files (hive partitions allowed)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"publisher data '{path}' does not exist: set data.publisher_path to a Parquet file or directory")
    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive", exclude_invalid_files=False)
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"publisher data '{path}' is not readable Parquet: {_first_line(exc)}") from exc
    if not dataset.files:
        raise DataError(f"publisher data '{path}' holds no Parquet files: point data.publisher_path at the data")
    if len(schema) == 0:
        raise DataError(f"publisher data '{path}' has no columns")
    return dataset


def window_filter(dataset: ds.Dataset, window: WindowConfig | None, path: str | Path) -> ds.Expression | None:
    """Build the filter for ``data.window`` ({column, start, end}; start inclusive, end exclusive)."""
    if window is None or window.column in (None, ""):
        return None
    column = window.column
    if column not in dataset.schema.names:
        raise ConfigError("data.window.column", f"column '{column}' is not in publisher data '{path}' (columns: {', '.join(dataset.schema.names)})")
    field_type = dataset.schema.field(column).type
    expr = None
    for key, op in (("start", "__ge__"), ("end", "__lt__")):
        bound = getattr(window, key)
        if bound is None:
            continue
        try:
            value = pa.scalar(bound).cast(field_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"data.window.{key}", f"'{bound}' cannot be read as {field_type} (the type of column '{column}')") from exc
        term = getattr(ds.field(column), op)(value)
        expr = term if expr is None else expr & term
    if expr is None:
        raise ConfigError("data.window", "a window column needs data.window.start and/or data.window.end")
    return expr


def scan_publisher(
    dataset: ds.Dataset,
    columns: Sequence[str],
    row_filter: ds.Expression | None,
    path: str | Path,
    share: tuple[int, int] | None = None,
) -> tuple[pa.Table, ScanStats]:
    """Read only ``columns`` of the rows in ``row_filter``; report what the scan cost.

    With ``share=(rank, ranks)`` only that rank's row groups are read (row_group_shares.py); the
    cost is still the whole scan's (every rank reads it from the same footers) except
    ``rows_in_window``, which counts this rank's rows: the caller sums it over ranks."""
    source, fragments = publisher_source(dataset, columns, row_filter, path, share)
    chunks = list(read_chunks(source, dataset, columns, row_filter, path))
    table = pa.concat_tables(chunks) if chunks else source.schema.empty_table().select(list(columns))
    return table, scan_cost(fragments, columns, table.num_rows, share)


def publisher_source(
    dataset: ds.Dataset, columns: Sequence[str], row_filter: ds.Expression | None, path: str | Path, share: tuple[int, int] | None = None
) -> tuple[ds.Dataset, list[ds.Fragment]]:
    """What this process reads of the publisher (its rank's row groups under torchrun), checked
    before any data is read: every column there, one schema in every file. Also the fragments
    the whole scan prunes to (what it costs)."""
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise DataError(f"publisher data '{path}': column '{missing[0]}' not found (columns: {', '.join(dataset.schema.names)})")
    fragments = list(dataset.get_fragments(filter=row_filter))
    # Checked up front: Arrow would silently parse "42" strings in one file as the other
    # files' numbers, or fail half-way with a message that names no file.
    mismatch = schema_mismatch(dataset, columns, fragments)
    if mismatch:
        raise DataError(f"publisher data '{path}': {mismatch}")
    if share is None:
        return dataset, fragments
    try:
        source, mine, groups = rank_share(dataset, fragments, row_filter, *share)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"publisher data '{path}' could not be read: {_first_line(exc)}") from exc
    log.info("rank %d of %d reads %d of %d row groups", share[0], share[1], mine, groups)
    return source, fragments


def read_chunks(
    source: ds.Dataset, dataset: ds.Dataset, columns: Sequence[str], row_filter: ds.Expression | None, path: str | Path, rows: int | None = None
) -> Iterator[pa.Table]:
    """``columns`` of the rows in the window, streamed in tables of at least ``rows`` rows
    (except the last; None: one table of everything). Unreadable data is one line naming the
    problem. Memory: one chunk, plus Arrow's read-ahead."""
    pending: list[pa.RecordBatch] = []
    held = 0
    try:
        for batch in source.to_batches(columns=list(columns), filter=row_filter):
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            held += batch.num_rows
            if rows is not None and held >= rows:
                yield pa.Table.from_batches(pending)
                pending, held = [], 0
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        mismatch = schema_mismatch(dataset, columns)
        raise DataError(f"publisher data '{path}' could not be read: {mismatch or _first_line(exc)}") from exc
    if pending:
        yield pa.Table.from_batches(pending)


def scan_cost(fragments: Sequence[ds.Fragment], columns: Sequence[str], rows_in_window: int, share: tuple[int, int] | None = None) -> ScanStats:
    rows, size = _fragment_cost(fragments, set(columns))
    stats = ScanStats(files_scanned=len(fragments), rows_scanned=rows, bytes_scanned=size, rows_in_window=rows_in_window)
    log.info(
        "scanned %d files, %d rows, %d bytes; %d rows in window%s",
        stats.files_scanned,
        rows,
        size,
        rows_in_window,
        " in this rank's share" if share is not None else "",
    )
    return stats


def _fragment_cost(fragments: Iterable[ds.Fragment], columns: set[str]) -> tuple[int, int]:
    """Rows and compressed bytes of the projected column chunks, read from Parquet footers."""
    rows = size = 0
    for fragment in fragments:
        metadata = fragment.metadata
        rows += metadata.num_rows
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".")[0] in columns:
                    size += chunk.total_compressed_size
    return rows, size


def _kind(t: pa.DataType) -> str:
    """Types that are the same data stored differently (int32/int64, dictionary strings)."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    for name, test in (("integer", pa.types.is_integer), ("floating", pa.types.is_floating), ("string", is_text)):
        if test(t):
            return name
    return str(t)


def schema_mismatch(dataset: ds.Dataset, columns: Sequence[str], fragments=None) -> str | None:
    """Name the file and column whose stored type differs from the dataset's (first file's), or
    that lacks a column the others have (its users would train with it silently null)."""
    for fragment in fragments if fragments is not None else dataset.get_fragments():
        from_paths = set(ds.get_partition_keys(fragment.partition_expression))  # hive columns live in the path
        try:
            schema = fragment.physical_schema
        except (pa.ArrowInvalid, OSError):
            return f"file '{fragment.path}' is corrupt or truncated; replace it"
        for name in columns:
            if name not in schema.names and name not in from_paths:
                return (
                    f"file '{fragment.path}' has no column '{name}', which the dataset has: its users would train with "
                    "it missing; add the column to that file or leave the file out"
                )
            if name in schema.names and _kind(schema.field(name).type) != _kind(dataset.schema.field(name).type):
                return (
                    f"file '{fragment.path}' stores column '{name}' as {schema.field(name).type} but the dataset as "
                    f"{dataset.schema.field(name).type}; rewrite the files with one schema"
                )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
