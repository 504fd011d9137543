"""distill: `raw_docs` x `expert_outputs` -> `distill_samples`, the core distiller per partition.

Only documents with no samples under the current fingerprint (program + chunking + distill
settings) are distilled, so a rerun adds nothing and a changed setting distils again. Every
distilled document leaves at least one row (kept or with a drop reason); a document the
distiller fails on leaves one row with drop_reason `error: ...` instead of failing the job.
"""

from __future__ import annotations

from pyspark.sql import Window
from pyspark.sql import functions as F

from ..distill import distill
from ..runtime import RunContext
from ..schemas import TABLES
from .batches import RowsFn, map_rows

STAGE = "distill"
_COMPUTED = ["doc_id", "chunk_index", "start_line", "end_line", "prompt", "program", "n_ops", "kept",
             "drop_reason", "doc_fidelity", "doc_deleted_fraction", "doc_illegal_fraction", "expert_model"]


def _sample_rows(doc: dict, config) -> list[dict]:
    """Every sample row of one document; a distiller failure is one row with the error as reason."""
    common = {"doc_id": doc["doc_id"], "expert_model": doc["expert_model"]}
    try:
        result = distill(doc["text"], doc["expert_text"], config.distill, config.chunking)
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


def pending(ctx: RunContext, fingerprint: str):
    """Documents with an `ok` expert output (the newest one) and no samples under this fingerprint."""
    newest = Window.partitionBy("doc_id").orderBy(F.col("created_at").desc(), F.col("expert_model"))
    experts = (ctx.read("expert_outputs").where("status = 'ok'")
               .withColumn("_rank", F.row_number().over(newest)).where("_rank = 1")
               .select("doc_id", F.col("text").alias("expert_text"), "expert_model", "raw_text_hash"))
    raw = ctx.read("raw_docs").select("doc_id", "text", "text_hash")
    done = ctx.read("distill_samples").where(F.col("fingerprint") == fingerprint).select("doc_id").distinct()
    return (raw.join(experts, (raw.doc_id == experts.doc_id) & (raw.text_hash == experts.raw_text_hash))
            .drop(experts.doc_id).join(done, "doc_id", "left_anti"))


def run(ctx: RunContext) -> dict:
    stats, config = ctx.stats, ctx.config
    fingerprint = config.fingerprint("program", "chunking", "distill")
    schema = TABLES["distill_samples"].spark_schema()
    computed = [f for f in schema.fields if f.name in _COMPUTED]
    out_schema = type(schema)([next(f for f in computed if f.name == n) for n in _COMPUTED])
    with stats.timer("distill"):
        docs = pending(ctx, fingerprint)
        samples = (map_rows(docs, _distill_rows(config), out_schema)
                   .withColumn("fingerprint", F.lit(fingerprint))
                   .withColumn("run_id", F.lit(ctx.run_id))
                   .withColumn("created_at", F.current_timestamp())
                   .select(*schema.fieldNames())
                   .persist())
        summary = samples.groupBy("kept", "drop_reason").agg(
            F.count("*").alias("samples"), F.countDistinct("doc_id").alias("docs")).collect()
    stats.counts["docs"] = samples.select("doc_id").distinct().count()
    for r in summary:
        key = "kept" if r["kept"] else f"dropped.{r['drop_reason']}"
        stats.counts[f"samples.{key}"] += r["samples"]
    with stats.timer("write"):
        ctx.append("distill_samples", samples, fingerprint=fingerprint)
    samples.unpersist()
    stats.info["fingerprint"] = fingerprint
    return stats.as_dict()
