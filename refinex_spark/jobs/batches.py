"""Map a pure rows -> rows function over a DataFrame's Arrow batches.

`mapInArrow` with an explicit Arrow schema, rather than `mapInPandas`: pandas turns an
all-null string column into float NaNs and an int column with nulls into floats, which
then fail to convert back; Arrow keeps the declared types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

RowsFn = Callable[[list[dict]], list[dict]]


def map_rows(df: DataFrame, fn: RowsFn, schema: StructType, profile=None) -> DataFrame:
    """Apply fn to every Arrow batch of df (as a list of row dicts); fn's rows must match schema."""
    arrow_schema = to_arrow_schema(schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield pa.RecordBatch.from_pylist(fn(batch.to_pylist()), schema=arrow_schema)

    return df.mapInArrow(run, schema, profile=profile)
