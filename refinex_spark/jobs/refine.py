"""refine: new `raw_docs` -> `refined_docs`, the refine model inside `mapInPandas`.

Incremental: a document is pending when `refined_docs` has no row for its doc_id and text
hash under this model and fingerprint. Each Python worker loads the model once
(`model.cache`), takes its GPU from the task's resources, and generates every chunk of an
Arrow batch in length-sorted micro-batches. On a cluster the stage asks for GPUs with a
stage-level ResourceProfile (local mode has none). Per-document failures are `error` rows;
a failing backend fails the task, so Spark retries it and a rerun picks up what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pyspark import TaskContext
from pyspark.sql import functions as F

from ..config import Config
from ..model import cache
from ..model.prompt import load_template
from ..refine import BatchStats, refine_batch
from ..runtime import RunContext
from ..schemas import TABLES
from .batches import RowsFn, map_rows

STAGE = "refine"
_COMPUTED = ["doc_id", "text_hash", "refined_text", "program", "op_outcomes", "status", "error",
             "deleted_fraction", "n_chunks", "n_fallback_chunks"]


def model_id(config: Config) -> str:
    """What the rows name as their model: a served model's name, else the resolved local path or hub id."""
    m = config.model
    if m.backend == "openai":
        return m.served_model or m.path
    return os.path.abspath(m.path) if os.path.exists(m.path) else m.path


def fingerprint(config: Config) -> str:
    """Settings that change a refined row: program + chunking + generation; not batch size or device."""
    m = config.model
    generation = {"model": model_id(config), "backend": m.backend, "max_new_tokens": m.max_new_tokens,
                  "prompt_version": m.prompt_version}
    blob = config.fingerprint("program", "chunking") + json.dumps(generation, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _bind_gpu() -> None:
    """Use the GPU Spark assigned to this task (cluster mode with GPU scheduling)."""
    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        import torch

        torch.cuda.set_device(int(gpus.addresses[0]))


def _refine_rows(config: Config, template: str) -> RowsFn:
    def run(docs: list[dict]) -> list[dict]:
        _bind_gpu()
        backend = cache.get_backend(config.model)  # loaded once per Python worker
        stats = BatchStats()
        rows = refine_batch([(d["doc_id"], d["text"], d["text_hash"]) for d in docs], backend, template, config, stats)
        ctx = TaskContext.get()
        rate = stats.input_chars / stats.seconds / 1e6 if stats.seconds else 0.0
        print(f"[refine] partition {ctx.partitionId() if ctx else -1}: {stats.docs} docs, {stats.chunks} chunks "
              f"in {stats.seconds:.1f}s ({rate:.3f} MB/s), statuses {stats.statuses}", file=sys.stderr, flush=True)
        return rows

    return run


def _gpu_profile(spark):
    """A stage-level ResourceProfile asking one GPU per task; None where it cannot apply (local mode)."""
    if spark.sparkContext.master.startswith("local"):
        return None
    conf = spark.sparkContext.getConf()
    if not conf.get("spark.executor.resource.gpu.amount", None):
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", 1.0)).build


def pending(ctx: RunContext, model: str, fp: str):
    done = (ctx.read("refined_docs").where((F.col("model_id") == model) & (F.col("fingerprint") == fp))
            .select("doc_id", "text_hash"))
    return ctx.read("raw_docs").select("doc_id", "text", "text_hash").join(done, ["doc_id", "text_hash"], "left_anti")


def run(ctx: RunContext) -> dict:
    config, stats = ctx.config, ctx.stats
    model = model_id(config)
    fp = fingerprint(config)
    # Executors get an absolute model path and the template text; they never read conf/.
    shipped = config.model_copy(update={"model": config.model.model_copy(update={"path": model})})
    template = load_template(config.model.prompt_version)
    schema = TABLES["refined_docs"].spark_schema()
    out_schema = type(schema)([schema[n] for n in _COMPUTED])
    with stats.timer("refine"):
        docs = pending(ctx, model, fp)
        rows = map_rows(docs, _refine_rows(shipped, template), out_schema, profile=_gpu_profile(ctx.spark))
        rows = (rows.withColumn("model_id", F.lit(model))
                .withColumn("prompt_version", F.lit(config.model.prompt_version))
                .withColumn("fingerprint", F.lit(fp))
                .withColumn("run_id", F.lit(ctx.run_id))
                .withColumn("created_at", F.current_timestamp())
                .select(*schema.fieldNames())
                .persist())
        by_status = {r["status"]: r["n"] for r in rows.groupBy("status").agg(F.count("*").alias("n")).collect()}
    stats.counts.update({f"status.{k}": v for k, v in by_status.items()})
    stats.counts["docs"] = sum(by_status.values())
    with stats.timer("write"):
        ctx.append("refined_docs", rows, fingerprint=fp)
    rows.unpersist()
    docs_s = stats.timings.get("refine", 0.0)
    stats.info.update(model_id=model, fingerprint=fp,
                      docs_per_s=round(stats.counts["docs"] / docs_s, 2) if docs_s else None)
    return stats.as_dict()
