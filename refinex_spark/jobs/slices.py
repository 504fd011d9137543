"""Pending work cut into disjoint slices of about `per_slice` documents, one Delta commit each.

A crash then loses the slice in flight, not the run: what the committed slices wrote is no
longer pending, so the rerun continues from there. Every cut is a filter with literal values
(a hash bucket of doc_id, a list of data files), so it is the same whichever executor evaluates
it, and a task retry recomputes the same rows.

Two ways to cut:
- `slices`: hash buckets of doc_id. Each slice evaluates the whole frame again, so it suits a
  frame that is cached (the expert sample).
- `file_slices`: groups of the table's data files, for a frame that scans a table too large to
  cache (refine over all of `raw_docs`). Spark skips the files a slice does not name, so a run
  reads each file's texts once, however many slices it has. A file with more pending documents
  than a slice holds is cut by hash, and only that file is read again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# The column `with_source_file` adds: the data file each row was read from.
FILE = "_source_file"


def slices(df: DataFrame, n_docs: int, per_slice: int) -> list[DataFrame]:
    """df (n_docs rows with a doc_id column) as ceil(n_docs / per_slice) disjoint slices covering it."""
    n = math.ceil(n_docs / per_slice)
    if n <= 1:
        return [df] * n
    return [_bucket(df, n, i) for i in range(n)]


def _bucket(df: DataFrame, buckets: int, bucket: int) -> DataFrame:
    return df.where(F.pmod(F.xxhash64("doc_id"), F.lit(buckets)) == bucket)


def with_source_file(table: DataFrame) -> DataFrame:
    """A table as read (before any join, which hides the file) with each row's data file in FILE."""
    return table.withColumn(FILE, F.col("_metadata.file_path"))


@dataclass(frozen=True)
class FileSlice:
    """Whole data files, or one bucket of `buckets` hash buckets of doc_id in a single file."""

    files: tuple[str, ...]
    buckets: int = 1
    bucket: int = 0


def plan_file_slices(pending: dict[str, int], per_slice: int) -> list[FileSlice]:
    """Slices over files with these pending document counts, none over `per_slice` documents
    except by the unevenness of hash buckets.

    Files go in name order, each into the current slice while it has room; a file with more than
    `per_slice` pending documents becomes ceil(count / per_slice) bucket slices of its own.
    """
    if per_slice < 1:
        raise ValueError(f"per_slice must be at least 1, got {per_slice}")
    out: list[FileSlice] = []
    group: list[str] = []
    size = 0
    for file in sorted(f for f, n in pending.items() if n > 0):
        n = pending[file]
        if n > per_slice:
            k = math.ceil(n / per_slice)
            out += [FileSlice((file,), k, i) for i in range(k)]
            continue
        if group and size + n > per_slice:
            out.append(FileSlice(tuple(group)))
            group, size = [], 0
        group.append(file)
        size += n
    if group:
        out.append(FileSlice(tuple(group)))
    return out


def file_slices(df: DataFrame, per_slice: int) -> tuple[int, list[DataFrame]]:
    """df's row count and df cut by `plan_file_slices`; df has FILE (`with_source_file` on its
    scan) and doc_id. Counting reads only the columns the count needs, no text."""
    counts = {r[FILE]: r["count"] for r in df.groupBy(FILE).count().collect()}
    parts = []
    for s in plan_file_slices(counts, per_slice):
        # A filter on the scan's file column alone: Spark prunes the files it does not name.
        part = df.where(F.col(FILE).isin(list(s.files)))
        parts.append((_bucket(part, s.buckets, s.bucket) if s.buckets > 1 else part).drop(FILE))
    return sum(counts.values()), parts
