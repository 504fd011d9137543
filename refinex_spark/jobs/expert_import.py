"""expert import: a file of precomputed expert outputs (doc_id, text, model) -> `expert_outputs`.

Records are read by the same `readers` as ingest, in `ingest.format` (so bad JSON, bad UTF-8 and
missing text become rejects). A record without a doc_id is rejected as `missing_doc_id`, one whose
doc_id is not in `raw_docs` as `unknown_doc_id`, one with a `raw_text_hash` other than the stored
text's as `text_hash_mismatch` (an output of another version of the document); an output already
imported for the same doc, model and prompt version is skipped, so importing a file twice adds
nothing. The expert is the record's `model` (or `expert_model`, as the table names it) field, else
`--model`; a blank one is none.
"""

from __future__ import annotations

from contextlib import ExitStack

from pyspark.sql import Window
from pyspark.sql import functions as F

from .. import readers
from ..runtime import RunContext, persisted
from .ingest import read_records, with_original_records
from .rejects import write_rejects

IMPORTED_PROMPT_VERSION = "imported"
KEY = ["doc_id", "expert_model", "prompt_version"]


def run(ctx: RunContext, path: str, default_model: str | None = None) -> dict:
    stats = ctx.stats
    # The ingest settings (format, size limit, splits) with the fields of an expert output file.
    reader_cfg = ctx.config.ingest.model_copy(update={"id_field": "doc_id", "text_field": "text", "source_field": None})
    files = readers.list_input_files([path])
    fingerprint = ctx.config.fingerprint("ingest")
    with ExitStack() as cache:
        with stats.timer("read"):
            records = cache.enter_context(persisted(read_records(ctx.spark, files, reader_cfg, require_id=True)))
            meta = lambda key: F.get_json_object("metadata", f"$.{key}")  # noqa: E731 - a column shorthand
            named = lambda key: F.nullif(F.trim(meta(key)), F.lit(""))  # noqa: E731 - blank is no model
            outputs = records.where("kind = 'doc'").select(
                "doc_id", "text", "text_hash", "source_file", "line_no",
                F.coalesce(named("model"), named("expert_model"), F.lit(default_model)).alias("expert_model"),
                F.coalesce(meta("prompt_version"), F.lit(IMPORTED_PROMPT_VERSION)).alias("prompt_version"),
                F.lower(F.trim(meta("raw_text_hash"))).alias("_claimed_hash"))  # text_hash is lower-case hex
            raw = ctx.read("raw_docs").select("doc_id", F.col("text_hash").alias("raw_text_hash"))
            first = Window.partitionBy(*KEY).orderBy("source_file", "line_no")
            outputs = cache.enter_context(persisted(outputs.withColumn("_rank", F.row_number().over(first))
                                                    .join(raw, "doc_id", "left")))
            reason = (F.when(F.col("expert_model").isNull(), "missing_model")
                      .when(F.col("raw_text_hash").isNull(), "unknown_doc_id")
                      .when(F.col("_claimed_hash") != F.col("raw_text_hash"), "text_hash_mismatch")
                      .when(F.col("_rank") > 1, "duplicate_id"))
            checked = outputs.withColumn("_reason", reason)
            bad = checked.where(F.col("_reason").isNotNull()).select(
                F.col("_reason").alias("reason"), "source_file", "line_no",
                F.substring("text", 1, readers.MAX_RECORD_CHARS).alias("record"),
                F.concat(F.lit("doc_id "), F.col("doc_id"),
                         F.when(F.col("_reason") == "text_hash_mismatch",
                                F.concat(F.lit(": raw_text_hash "), F.col("_claimed_hash"),
                                         F.lit(" is not the stored text's "), F.col("raw_text_hash")))
                         .otherwise(F.lit(""))).alias("detail"), "text_hash")
            rejects = records.where("kind = 'reject'").select("reason", "source_file", "line_no", "record", "detail")
            done = ctx.read("expert_outputs").where("status = 'ok'").select(*KEY)
            good = checked.where(F.col("_reason").isNull())
            new = good.join(done, KEY, "left_anti")

        stats.counts["read"] = records.count()
        stats.counts["already_present"] = good.count() - new.count()
        by_reason = {r["reason"]: r["n"] for r in rejects.unionByName(bad.select(*rejects.columns))
                     .groupBy("reason").count().withColumnRenamed("count", "n").collect()}
        if by_reason.get("missing_model", 0) == outputs.count() > 0:  # a whole file of rejects: say why instead
            raise ValueError(f"no record of {path} names its expert model (a 'model' field): pass --model NAME")
        # The readers' rejects hold the record as read; outputs rejected here get theirs from a re-read.
        if by_reason.keys() & {"missing_model", "unknown_doc_id", "text_hash_mismatch", "duplicate_id"}:
            bad = with_original_records(ctx.spark, bad, reader_cfg)
        rejects = rejects.unionByName(bad.select(*rejects.columns))
        stats.counts["rejected"] = sum(by_reason.values())
        stats.counts.update({f"rejected.{k}": v for k, v in by_reason.items()})
        rows = new.select(*KEY, "text", F.lit("ok").alias("status"), F.lit(None).cast("string").alias("error"),
                          F.lit(None).cast("double").alias("latency_s"), F.lit(None).cast("long").alias("tokens"),
                          "raw_text_hash", F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("created_at"))
        with stats.timer("write"):
            info = ctx.append("expert_outputs", rows, fingerprint=fingerprint)
            write_rejects(ctx, rejects, fingerprint)
        stats.counts["accepted"] = info.rows if not info.skipped else 0
    return stats.as_dict()
