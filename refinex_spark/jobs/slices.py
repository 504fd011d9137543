"""Pending work cut into disjoint slices of about `per_slice` documents, one Delta commit each.

A crash then loses the slice in flight, not the run: what the committed slices wrote is no
longer pending, so the rerun continues from there. A slice is a hash bucket of doc_id, so the
cut is the same whichever executor evaluates it, and a task retry recomputes the same rows.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def slices(df: DataFrame, n_docs: int, per_slice: int) -> list[DataFrame]:
    """df (n_docs rows with a doc_id column) as ceil(n_docs / per_slice) disjoint slices covering it."""
    n = math.ceil(n_docs / per_slice)
    if n <= 1:
        return [df] * n
    return [df.where(F.pmod(F.xxhash64("doc_id"), F.lit(n)) == i) for i in range(n)]
