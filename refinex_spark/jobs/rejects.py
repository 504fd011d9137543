"""The `rejects` table: bad input rows of any stage, with a reason, written at most once each."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..runtime import RunContext

KEY = ["stage", "source_file", "line_no", "reason"]


def _record_hash(df: DataFrame):
    """A reject is the same one again only with the same record: a file replaced under the same name
    can hold another bad record on the same line, which must be recorded too."""
    return F.xxhash64(F.coalesce(df["record"], F.lit("")), df["record"].isNull())


def write_rejects(ctx: RunContext, rows: DataFrame, fingerprint: str):
    """rows: (reason, source_file, line_no, record, detail). Rejects already recorded are skipped."""
    rows = rows.select(F.lit(ctx.stage).alias("stage"), "reason", "source_file",
                       F.col("line_no").cast("long").alias("line_no"), "record", "detail",
                       F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("created_at"))
    recorded = ctx.read("rejects")
    seen = recorded.select(*KEY, _record_hash(recorded).alias("_record"))
    # eqNullSafe: line_no is null for file-level rejects, and null must match null here.
    cond = [rows[k].eqNullSafe(seen[k]) for k in KEY] + [_record_hash(rows) == seen["_record"]]
    return ctx.append("rejects", rows.join(seen, cond, "left_anti"), fingerprint=fingerprint)
