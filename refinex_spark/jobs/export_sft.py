"""export-sft: kept `distill_samples` -> a directory of chat-format SFT part files (jsonl or parquet).

OUT is written by Spark: `OUT/part-*.json` (one JSON object a line) or `OUT/part-*.parquet`, plus
`_SUCCESS`; load the part files, e.g. `datasets.load_dataset("json", data_files="OUT/*.json")`.
Each row is `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "doc_id": ...,
"chunk_index": ...}`, the layout TRL's SFTTrainer, axolotl and LLaMA-Factory read. The user
turn is built by `model.prompt.user_message`, the same function training and inference use.
"""

from __future__ import annotations

import os

from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from ..lake import is_local, resolve_root, spark_path
from ..model.prompt import load_template, user_message
from ..runtime import RunContext
from ..spark_session import spark_master


def run(ctx: RunContext, output: str, fmt: str = "jsonl") -> dict:
    # A local path or a storage URI, as for the lake (a relative path is refused on a cluster).
    target = resolve_root(output, spark_master(ctx.spark), what="export path")
    exists = f"output {output} already exists; choose a new path (exports are never overwritten)"
    if is_local(target) and os.path.exists(target):  # remote: the writer's errorifexists says so
        raise ValueError(exists)
    config, stats = ctx.config, ctx.stats
    template = load_template(config.model.prompt_version)
    fingerprint = config.fingerprint("program", "chunking", "distill")
    as_user = F.udf(lambda chunk: user_message(template, chunk), "string")
    kept = ctx.read("distill_samples").where(F.col("kept"))
    samples = kept.where(F.col("fingerprint") == fingerprint)
    n = samples.count()
    if not n:
        present = sorted(r["fingerprint"] for r in kept.select("fingerprint").distinct().collect())
        raise ValueError(f"no kept distill_samples under fingerprint {fingerprint} (fingerprints with kept samples: "
                         f"{', '.join(present) or 'none'}): run `distill` with these program/chunking/distill "
                         "settings first")
    rows = samples.select(
        F.array(
            F.struct(F.lit("user").alias("role"), as_user("prompt").alias("content")),
            F.struct(F.lit("assistant").alias("role"), F.col("program").alias("content")),
        ).alias("messages"),
        "doc_id", "chunk_index", F.lit(config.model.prompt_version).alias("prompt_version"),
    ).orderBy("doc_id", "chunk_index")
    with stats.timer("write"):
        writer = rows.coalesce(1).write.mode("error")  # "errorifexists" is not a mode Spark Connect accepts
        try:
            (writer.json if fmt == "jsonl" else writer.parquet)(spark_path(target))
        except AnalysisException as e:
            if e.getCondition() != "PATH_ALREADY_EXISTS":
                raise
            raise ValueError(exists) from e
    stats.counts["samples"] = n
    stats.info.update(output=target, format=fmt, fingerprint=fingerprint)
    return stats.as_dict()
