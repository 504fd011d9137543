"""distill: `raw_docs` x `expert_outputs` -> `distill_samples`, the core distiller per partition.

A document is distilled when its newest `ok` expert output (for its current text) is newer than
the output its samples under the current fingerprint (program + chunking + distill settings) were
distilled from, or it has none: a rerun adds nothing, a changed setting distils again, and so does
a newer expert output (regenerated, re-imported, or of a changed text), even one that an expert run
committed while a distill run was reading the outputs before it. Earlier samples stay in the table, superseded:
`current` keeps each document's newest, which is what training, export and the report read.
Every distilled document leaves at least one row (kept or with a drop reason); a document the
distiller fails on leaves one row with drop_reason `error: ...` instead of failing the job.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..distill import distill
from ..runtime import RunContext
from ..schemas import TABLES
from .batches import RowsFn, map_rows

_COMPUTED = ["doc_id", "chunk_index", "start_line", "end_line", "prompt", "program", "n_ops", "kept",
             "drop_reason", "doc_fidelity", "doc_deleted_fraction", "doc_illegal_fraction", "expert_model",
             "expert_created_at"]


def _sample_rows(doc: dict, config) -> list[dict]:
    """Every sample row of one document; a distiller failure is one row with the error as reason."""
    common = {key: doc[key] for key in ("doc_id", "expert_model", "expert_created_at")}
    try:
        result = distill(doc["text"], doc["expert_text"], config.distill, config.chunking, program=config.program)
    except Exception as e:  # noqa: BLE001 - one bad document must not fail the stage
        return [{**common, "chunk_index": -1, "start_line": -1, "end_line": -1, "prompt": "", "program": "",
                 "n_ops": 0, "kept": False, "drop_reason": f"error: {type(e).__name__}: {e}"[:500],
                 "doc_fidelity": None, "doc_deleted_fraction": None, "doc_illegal_fraction": None}]
    st = result.stats
    doc_level = {"doc_fidelity": st.fidelity, "doc_deleted_fraction": st.deleted_fraction,
                 "doc_illegal_fraction": st.illegal_fraction}
    return [{**common, **doc_level, "chunk_index": s.chunk_index, "start_line": s.start_line,
             "end_line": s.end_line, "prompt": s.prompt, "program": s.program, "n_ops": s.n_ops,
             "kept": s.kept, "drop_reason": s.drop_reason} for s in result.samples]


def _distill_rows(config) -> RowsFn:
    return lambda docs: [row for doc in docs for row in _sample_rows(doc, config)]


def current(samples: DataFrame) -> DataFrame:
    """Each document's samples of its newest distillation, per fingerprint (one run writes all of a
    document's samples, with one created_at); the older ones are superseded, not deleted."""
    newest = samples.groupBy("doc_id", "fingerprint").agg(F.max("created_at").alias("created_at"))
    return samples.join(newest, ["doc_id", "fingerprint", "created_at"], "left_semi")


def kept_current(samples: DataFrame, fingerprint: str) -> DataFrame:
    """The kept samples of each document's newest distillation under `fingerprint`: what training
    and export read."""
    return current(samples.where(F.col("fingerprint") == fingerprint)).where(F.col("kept"))


def no_kept_samples(samples: DataFrame, fingerprint: str) -> ValueError:
    """The error for a fingerprint without kept samples, naming the fingerprints that have some."""
    present = sorted(r["fingerprint"] for r in samples.where(F.col("kept")).select("fingerprint").distinct().collect())
    return ValueError(f"no kept distill_samples under fingerprint {fingerprint} (fingerprints with kept samples: "
                      f"{', '.join(present) or 'none'}): pass the settings (--config, --set) the lake was distilled "
                      "with, or run `distill` with these program/chunking/distill settings first")


def pending(ctx: RunContext, fingerprint: str):
    """Documents with an `ok` expert output for their current text (the newest one) newer than the
    one their samples under this fingerprint come from, or with no samples.

    The outputs are compared by their own created_at, not with when the samples were made: an expert
    run stamps its rows when it starts, and one that commits while a distill run reads would
    otherwise leave outputs older than samples that never saw them. Samples written before
    `expert_created_at` was recorded stand for outputs as old as themselves, as they used to.

    The expert pass covers a sample of `raw_docs`, and a rerun finds most of it distilled, so
    both sides are first cut down to what is pending without moving any text: expert outputs by
    a broadcast of each document's last distilled output's time (the sample's size), raw documents by a
    broadcast of the 8-byte hashes of the pending outputs' keys (a hash collision only lets a
    document through to the exact join). Only then do texts cross the network, once, in hash
    joins without sorting. Both sides are hash-partitioned on the join key into exactly
    `spark.sql.shuffle.partitions` parts (a task each): adaptive execution would otherwise
    coalesce them by shuffled bytes into a few uneven tasks, while the distiller's cost is CPU
    per character (on local[2], 8 parts became 3, the last one running alone). The newest output
    of a key is found on the key columns alone and joined back inside those partitions, so no
    text is sorted or shuffled twice, and it takes no job of its own.
    """
    setting = ctx.spark.conf.get("spark.sql.shuffle.partitions")
    parts = [int(setting)] if setting.isdigit() else []  # Databricks' "auto": adaptive execution decides
    key = ["doc_id", "text_hash"]
    done = F.broadcast(ctx.read("distill_samples").where(F.col("fingerprint") == fingerprint)
                       .groupBy("doc_id")
                       .agg(F.max(F.coalesce("expert_created_at", "created_at")).alias("_distilled_at")))
    # Outputs newer than the document's samples: their newest is the document's newest.
    ok = (ctx.read("expert_outputs").where("status = 'ok'").withColumnRenamed("raw_text_hash", "text_hash")
          .join(done, "doc_id", "left")
          .where(F.col("_distilled_at").isNull() | (F.col("created_at") > F.col("_distilled_at")))
          .drop("_distilled_at"))
    sampled = F.broadcast(ok.select(F.xxhash64(*key).alias("_key")).distinct())
    experts = ok.repartition(*parts, *key)
    # Newest first; ties (one import with several prompt versions) go to the greatest model, then version.
    rank = F.struct("created_at", "expert_model", "prompt_version")
    newest = experts.groupBy(*key).agg(F.max(rank).alias("_newest"))
    # `>=` (rank <= _newest always) rather than `==`, which the optimizer would make a join key
    # and so shuffle the texts again by it.
    experts = (experts.join(newest.hint("shuffle_hash"), key).where(rank >= F.col("_newest"))
               .select(*key, F.col("text").alias("expert_text"), "expert_model",
                       F.col("created_at").alias("expert_created_at")))
    raw = (ctx.read("raw_docs").select(*key, "text")
           .join(sampled, F.xxhash64(*key) == F.col("_key"), "left_semi")
           .repartition(*parts, *key))
    return raw.join(experts.hint("shuffle_hash"), key).select("doc_id", "text", "expert_text", "expert_model",
                                                              "expert_created_at")


def run(ctx: RunContext) -> dict:
    stats, config = ctx.stats, ctx.config
    fingerprint = config.fingerprint("program", "chunking", "distill")
    out_schema = TABLES["distill_samples"].spark_schema(_COMPUTED)
    samples = (map_rows(pending(ctx, fingerprint), _distill_rows(config), out_schema)
               .withColumn("fingerprint", F.lit(fingerprint))
               .withColumn("run_id", F.lit(ctx.run_id))
               .withColumn("created_at", F.current_timestamp()))
    # One pass: distilling happens as the rows are written; the summary reads back what was committed.
    with stats.timer("distill_and_write"):
        info = ctx.append("distill_samples", samples, fingerprint=fingerprint)
    if info.version is not None:
        written = ctx.lake.read("distill_samples", version=info.version).where(F.col("run_id") == ctx.run_id)
        # Every distilled document has exactly one row with chunk_index 0 (or -1, its error row), so
        # one aggregation counts samples per (kept, reason) and documents, without a distinct.
        summary = written.groupBy("kept", "drop_reason").agg(
            F.count("*").alias("samples"), F.count_if(F.col("chunk_index") <= 0).alias("docs"))
        for r in summary.collect():
            stats.counts["docs"] += r["docs"]
            key = "kept" if r["kept"] else f"dropped.{r['drop_reason']}"
            stats.counts[f"samples.{key}"] += r["samples"]
    else:
        stats.counts["docs"] = 0
    stats.info["fingerprint"] = fingerprint
    return stats.as_dict()
