"""Map a pure rows -> rows function over a DataFrame's Arrow batches.

`mapInArrow` with an explicit Arrow schema, rather than `mapInPandas`: pandas turns an
all-null string column into float NaNs and an int column with nulls into floats, which
then fail to convert back; Arrow keeps the declared types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

RowsFn = Callable[[list[dict]], Iterable[dict]]

# Output batches are cut at this many rows or text characters, whichever comes first: an Arrow
# string column holds at most 2 GiB per batch, and one input row (a file, for ingest) can expand
# into millions of output rows.
MAX_BATCH_ROWS = 4096
MAX_BATCH_CHARS = 64 << 20


def _bounded(rows: Iterable[dict]) -> Iterator[list[dict]]:
    batch: list[dict] = []
    chars = 0
    for row in rows:
        batch.append(row)
        chars += sum(len(v) for v in row.values() if isinstance(v, str))
        if len(batch) >= MAX_BATCH_ROWS or chars >= MAX_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _to_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    # Column by column: a third of the time of RecordBatch.from_pylist. As there, a missing key is null.
    return pa.RecordBatch.from_arrays([pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema],
                                      schema=schema)


def map_rows(df: DataFrame, fn: RowsFn, schema: StructType, profile=None) -> DataFrame:
    """Apply fn to every Arrow batch of df (as a list of row dicts); fn's rows must match schema.

    fn may return a lazy iterable: its rows are converted in bounded batches as they come.
    """
    # Timestamps as UTC instants: the session's time zone (spark_session.FIXED_CONF) and the lake's.
    arrow_schema = to_arrow_schema(schema, timezone="UTC")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for rows in _bounded(fn(batch.to_pylist())):
                yield _to_batch(rows, arrow_schema)

    return df.mapInArrow(run, schema, profile=profile)
