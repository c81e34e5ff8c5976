"""Split a publisher scan across torchrun ranks by Parquet row group.

Row groups, not files, are the unit: a publisher table is often one large file, which file-level
sharding would hand to a single rank. Every rank computes the same assignment from the Parquet
footers alone (no data is read): largest row groups first, each to the rank with the fewest rows
so far (ties to the lowest rank), which keeps the ranks within one row group of each other.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import pyarrow as pa
import pyarrow.dataset as ds


def row_groups(fragments: Sequence[ds.ParquetFileFragment], row_filter: ds.Expression | None, schema: pa.Schema) -> list[ds.ParquetFileFragment]:
    """One fragment per row group, in file order; groups whose statistics rule out the window are
    dropped. The dataset's schema, not the file's, so that a hive partition column resolves."""
    ordered = sorted(fragments, key=lambda f: f.path)
    return [group for fragment in ordered for group in fragment.split_by_row_group(filter=row_filter, schema=schema)]


def assign(sizes: Sequence[int], ranks: int) -> list[list[int]]:
    """Indices of ``sizes`` for each rank: longest-processing-time-first greedy balancing."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    load = [(0, rank) for rank in range(ranks)]
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for i in order:
        rows, rank = heapq.heappop(load)
        shares[rank].append(i)
        heapq.heappush(load, (rows + sizes[i], rank))
    return [sorted(share) for share in shares]


def rank_share(
    dataset: ds.FileSystemDataset, fragments: Sequence[ds.ParquetFileFragment], row_filter: ds.Expression | None, rank: int, ranks: int
) -> tuple[ds.FileSystemDataset, int, int]:
    """The dataset of this rank's row groups (hive partition values kept), their number, and
    the number of row groups in the whole scan."""
    groups = row_groups(fragments, row_filter, dataset.schema)
    mine = [groups[i] for i in assign([g.row_groups[0].num_rows for g in groups], ranks)[rank]]
    share = ds.FileSystemDataset(mine, schema=dataset.schema, format=dataset.format, filesystem=dataset.filesystem)
    return share, len(mine), len(groups)
