"""The train stage's samples as one Parquet file: written from a stream, read back in batches.

The driver streams the kept `distill_samples` into it and every training process reads it, so
neither holds the samples as Python objects all at once, and TorchDistributor sends each process
a path instead of pickling the corpus to it. Rows keep their order (doc_id, chunk_index).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("doc_id", pa.string()), ("prompt", pa.string()), ("program", pa.string())])
# Rows per row group, written and read: a few thousand chunks of ~6 kB are tens of MB at a time.
BATCH_ROWS = 4096


@dataclass(frozen=True, slots=True)
class SampleFile:
    """(prompt, program) pairs of a Parquet file; `doc_ids` gives each one's document."""

    path: str

    def __len__(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for batch in pq.ParquetFile(self.path).iter_batches(BATCH_ROWS, columns=["prompt", "program"]):
            yield from zip(batch.column("prompt").to_pylist(), batch.column("program").to_pylist())

    def doc_ids(self) -> list[str]:
        return pq.read_table(self.path, columns=["doc_id"]).column("doc_id").to_pylist()


def write_sample_file(path: str | Path, rows: Iterable[tuple[str, str, str]]) -> SampleFile:
    """Write (doc_id, prompt, program) rows to `path`, replacing it whole: the rows go to a partial file
    renamed into place when complete, so a crash mid-write leaves the previous file (or none) where
    renames are atomic, as on local disks and HDFS-backed mounts (on a FUSE mount of an object store a
    rename may be a copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    rows = iter(rows)
    with pq.ParquetWriter(partial, SCHEMA) as writer:
        while batch := list(islice(rows, BATCH_ROWS)):
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(column, pa.string()) for column in zip(*batch)], schema=SCHEMA))
    os.replace(partial, path)
    return SampleFile(str(path))
