"""export-sft: kept `distill_samples` -> a directory of chat-format SFT part files (jsonl or parquet).

OUT is written by Spark: `OUT/part-*.json` (one JSON object a line) or `OUT/part-*.parquet`, plus
`_SUCCESS`; load the part files, e.g. `datasets.load_dataset("json", data_files="OUT/*.json")`.
Each row is `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "doc_id": ...,
"chunk_index": ...}`, the layout TRL's SFTTrainer, axolotl and LLaMA-Factory read. The user
turn is built by `model.prompt.user_message`, the same function training and inference use.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from ..lake import resolve_root, spark_path
from ..model.prompt import load_template, user_message
from ..readers import resolve
from ..runtime import RunContext
from ..spark_session import spark_master
from .distill import kept_current, no_kept_samples


# All a crashed export leaves: Spark's part files of the format (part-00000-<job uuid>-c000.json, or
# part-00000-tid-<n>-<uuid>-<n>-c000.snappy.parquet on Databricks), their checksums, its temporary
# directories. Another writer's names (pyarrow's part-0.parquet, say) are not an export's.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_PART = r"part-\d{5}-(tid-\d+-)?" + _UUID + r"(-\d+)?(-c\d{3})?(\.\w+)?\."  # + the format's extension
_TEMPORARY = r"_temporary|_started_.*|_committed_.*"
_EXTENSION = {"jsonl": "json", "parquet": "parquet"}
COLUMNS = ["messages", "doc_id", "chunk_index", "prompt_version"]  # an export's rows, in order


def _an_export(fs: pafs.FileSystem, path: str, names: list[str], fmt: str) -> bool:
    """Whether names (the folder's) are what an export in fmt leaves before `_SUCCESS`: Spark's part
    files with an export's columns, and Spark's temporary files; no file of anyone else is replaced."""
    part = re.compile(_PART + _EXTENSION[fmt])
    ours = re.compile(rf"{_TEMPORARY}|\.({part.pattern})\.crc")
    if not all(part.fullmatch(n) or ours.fullmatch(n) for n in names):
        return False
    parts = sorted(n for n in names if part.fullmatch(n))
    if not parts:
        return True
    with fs.open_input_file(f"{path}/{parts[0]}") as f:
        if fmt == "parquet":
            return pq.read_schema(f).names == COLUMNS
        first = f.read(1 << 20).split(b"\n", 1)[0]
    try:
        return list(json.loads(first)) == COLUMNS
    except (ValueError, TypeError):
        return False


def _existing_output(target: str, fmt: str) -> str | None:
    """What is at target: "finished" (an export, with `_SUCCESS`), "crashed" (an export's Spark output
    without it, `_an_export`), "other" (anything else), "blocked" (nothing, but the nearest existing
    folder above it is a file), or None (nothing, or a scheme pyarrow cannot look into, dbfs:/)."""
    try:
        fs, path = resolve(target)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            parent = path.rstrip("/").rpartition("/")[0]
            while parent and (above := fs.get_file_info(parent)).type == pafs.FileType.NotFound:
                parent = parent.rpartition("/")[0]
            return "blocked" if parent and above.type == pafs.FileType.File else None
        if info.type != pafs.FileType.Directory:
            return "other"
        names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path))]
        if "_SUCCESS" in names:
            return "finished"
        return "crashed" if _an_export(fs, path, names, fmt) else "other"
    except (OSError, ValueError, pa.ArrowException):
        return None  # the writer's own check ("error" mode) still refuses an existing path


def run(ctx: RunContext, output: str, fmt: str = "jsonl") -> dict:
    # A local path or a storage URI, as for the lake (a relative path is refused on a cluster).
    target = resolve_root(output, spark_master(ctx.spark), what="export path")
    exists = f"output {output} already exists; choose a new path (exports are never overwritten)"
    found = _existing_output(target, fmt)
    if found == "finished":
        raise ValueError(exists)
    if found == "other":
        raise ValueError(f"output {output} exists and holds files no export wrote; choose a new path")
    if found == "blocked":
        raise ValueError(f"output {output} cannot be created: a folder above it is a file; choose a new path")
    config, stats = ctx.config, ctx.stats
    template = load_template(config.model.prompt_version)
    fingerprint = config.fingerprint("program", "chunking", "distill")
    as_user = F.udf(lambda chunk: user_message(template, chunk), "string")
    table = ctx.read("distill_samples")
    samples = kept_current(table, fingerprint)
    n = samples.count()
    if not n:
        raise no_kept_samples(table, fingerprint)
    rows = samples.select(
        F.array(
            F.struct(F.lit("user").alias("role"), as_user("prompt").alias("content")),
            F.struct(F.lit("assistant").alias("role"), F.col("program").alias("content")),
        ).alias("messages"),
        "doc_id", "chunk_index", F.lit(config.model.prompt_version).alias("prompt_version"),
    ).orderBy("doc_id", "chunk_index")
    with stats.timer("write"):
        # A crashed export's leftovers are replaced; anything else is never overwritten ("errorifexists" is not a
        # mode Spark Connect accepts).
        # Written by as many tasks as the sort has ranges (adaptive execution merges small ones, so a
        # small export is one file): part files in name order hold the samples in (doc_id, chunk) order.
        writer = rows.write.mode("overwrite" if found == "crashed" else "error")
        try:
            (writer.json if fmt == "jsonl" else writer.parquet)(spark_path(target))
        except AnalysisException as e:
            if e.getCondition() != "PATH_ALREADY_EXISTS":
                raise
            raise ValueError(exists) from e
    stats.counts["samples"] = n
    stats.info.update(output=target, format=fmt, fingerprint=fingerprint, replaced_crashed_export=found == "crashed")
    return stats.as_dict()
