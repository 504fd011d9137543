"""ingest: jsonl / parquet / text files -> `raw_docs`, bad records -> `rejects`.

One Spark task per split of an input file (`readers.plan_splits`: big uncompressed jsonl and
parquet files are read, and planned, by several tasks) reads it with `readers.read_file`. Within
the batch the first record of a doc_id wins; a doc_id already in `raw_docs` with the same text is
skipped (so ingesting the same files again adds nothing), with different text it is a
`duplicate_id` reject, which keeps the offending record as read (re-read from just the files that
hold one).
Rejects already recorded for the same file, line and reason are not written again.
read = accepted + rejected + already_present.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from .. import readers
from ..runtime import RunContext, persisted
from .batches import RowsFn, map_rows
from .rejects import write_rejects


_RECORD = StructType([
    StructField("kind", StringType()), StructField("doc_id", StringType()), StructField("text", StringType()),
    StructField("source", StringType()), StructField("metadata", StringType()),
    StructField("text_hash", StringType()), StructField("n_chars", LongType()),
    StructField("source_file", StringType()), StructField("line_no", LongType()),
    StructField("reason", StringType()), StructField("record", StringType()), StructField("detail", StringType()),
])


_SPLIT = StructType([StructField("path", StringType()),
                     *(StructField(name, LongType()) for name in readers.Split._fields)])
_SNAPPED = StructType([*_SPLIT.fields, StructField("newlines", LongType())])


def _split_of(row: dict) -> readers.Split:
    return readers.Split(*(row[f] for f in readers.Split._fields))


def _plan_files(cfg) -> RowsFn:
    return lambda rows: ({"path": row["path"], **split._asdict()}
                         for row in rows for split in readers.plan_file(row["path"], cfg))


def _snap_pieces(rows: list[dict]) -> Iterator[dict]:
    for row in rows:
        piece, newlines = readers.snap_piece(row["path"], _split_of(row))
        yield {"path": row["path"], **piece._asdict(), "newlines": newlines}


def _read_splits(cfg, require_id: bool, keep_record: bool) -> RowsFn:
    def read(rows: list[dict]) -> Iterator[dict]:
        return (record for row in rows
                for record in readers.read_file(row["path"], cfg, require_id=require_id, keep_record=keep_record,
                                                split=_split_of(row)))

    return read


def _one_per_task(spark, rows: list[tuple], schema: StructType) -> DataFrame:
    # Numbered and range-partitioned on the number: round-robin would put two rows in one task now and then.
    numbered = spark.createDataFrame([(i, *row) for i, row in enumerate(rows)],
                                     StructType([StructField("_i", LongType()), *schema.fields]))
    return numbered.repartitionByRange(max(1, len(rows)), "_i").drop("_i")


def read_records(spark, files: Mapping[str, int | None], cfg, *, require_id: bool = False,
                 keep_record: bool = False, lines: dict[str, list[int]] | None = None) -> DataFrame:
    """One task per split of a file (`readers.plan_splits`); each yields its `doc` and `reject` records
    (see readers.read_file). `files` maps each file to its size in bytes as listed (None: not known).
    Planning takes a task per file that may split (`readers.plan_file`, from metadata: only files
    bigger than a split, where the size is known), then one per piece of a big jsonl file
    (`readers.snap_piece`, which counts its newlines), so a big file's planning pass is as parallel as
    its read. With `lines` (file -> line numbers) only the splits that hold those lines are read.

    A file whose extension names no format (a README.md in the input directory) is one
    `unreadable_file` reject; when no file has a known format, nothing could be read: refused."""
    if files and all(readers.format_of(f, cfg.format) is None for f in files):
        readers.detect_format(next(iter(files)), cfg.format)  # raises, before any Spark work
    splittable = {f for f, size in files.items() if readers.splittable(f, cfg, size)}
    plans: dict[str, list[readers.Split]] = {f: [readers.WHOLE] for f in files if f not in splittable}
    if splittable:
        paths = _one_per_task(spark, [(f,) for f in sorted(splittable)], StructType(_SPLIT.fields[:1]))
        pieces = []
        for r in map_rows(paths, _plan_files(cfg), _SPLIT).collect():
            if readers.is_piece(split := _split_of(r)):
                pieces.append(tuple(r))
            else:
                plans.setdefault(r["path"], []).append(split)
        snapped: dict[str, list[tuple[readers.Split, int]]] = {}
        for r in (map_rows(_one_per_task(spark, pieces, _SPLIT), _snap_pieces, _SNAPPED).collect() if pieces else []):
            snapped.setdefault(r["path"], []).append((_split_of(r), r["newlines"]))
        plans.update((path, readers.number_pieces(sorted(of_file))) for path, of_file in snapped.items())
    if lines is not None:
        plans = {path: readers.splits_holding(sorted(of_file), lines.get(path, [])) for path, of_file in plans.items()}
    splits = [(path, *split) for path, of_file in sorted(plans.items()) for split in of_file]
    return map_rows(_one_per_task(spark, splits, _SPLIT), _read_splits(cfg, require_id, keep_record), _RECORD)


def with_original_records(spark, rejected: DataFrame, cfg) -> DataFrame:
    """Rejected docs (reason, source_file, line_no, record, detail, text_hash) with `record` set to the
    record as its file holds it, like the readers' own rejects keep it.

    Docs are read without their raw record (it would double what a run holds), so the splits that
    hold a rejected doc are read again (of a big file, not all of it). A record whose file changed
    since (other text at that line) keeps the `record` it came with.
    """
    lines: dict[str, list[int]] = {}
    for r in rejected.select("source_file", "line_no").distinct().collect():
        lines.setdefault(r["source_file"], []).append(r["line_no"])
    originals = (read_records(spark, dict.fromkeys(sorted(lines)), cfg, keep_record=True, lines=lines)
                 .where("kind = 'doc'")
                 .select("source_file", "line_no", "text_hash", F.col("record").alias("_original")))
    return (rejected.join(originals, ["source_file", "line_no", "text_hash"], "left")
            .select("reason", "source_file", "line_no", F.coalesce("_original", "record").alias("record"), "detail"))


def run(ctx: RunContext, paths: list[str]) -> dict:
    spark, cfg, stats = ctx.spark, ctx.config.ingest, ctx.stats
    files = readers.list_input_files(paths)
    if not files:  # an empty directory is a mistyped path or a drop that has not landed: say so
        raise ValueError(f"no input files under {', '.join(paths)} (names starting with '.' or '_' are skipped)")
    stats.counts["files"] = len(files)
    fingerprint = ctx.config.fingerprint("ingest")

    with ExitStack() as cache:
        with stats.timer("read"):
            records = cache.enter_context(persisted(read_records(spark, files, cfg)))
            existing = ctx.read("raw_docs").select("doc_id", F.col("text_hash").alias("_existing_hash"))
            docs = records.where("kind = 'doc'").join(existing, "doc_id", "left")
            present = F.col("_existing_hash").isNotNull() & (F.col("_existing_hash") == F.col("text_hash"))
            conflicts = F.col("_existing_hash").isNotNull() & (F.col("_existing_hash") != F.col("text_hash"))
            # The first record of an id wins, unless one is the stored record: then that one is it.
            first = Window.partitionBy("doc_id").orderBy(present.desc_nulls_last(), "source_file", "line_no")
            docs = cache.enter_context(persisted(docs.withColumn("_rank", F.row_number().over(first))))
            is_dup_in_batch = F.col("_rank") > 1
            accepted = docs.where(~is_dup_in_batch & F.col("_existing_hash").isNull())
            duplicates = docs.where(is_dup_in_batch | conflicts).select(
                F.lit("duplicate_id").alias("reason"), "source_file", "line_no",
                F.substring("text", 1, readers.MAX_RECORD_CHARS).alias("record"),
                F.concat(F.lit("doc_id "), F.col("doc_id"),
                         F.when(conflicts, F.lit(" already in raw_docs with different text"))
                         .otherwise(F.lit(" repeats an earlier record in this batch"))).alias("detail"),
                "text_hash")
            counts = {r["k"]: r["n"] for r in docs.select(
                F.when(is_dup_in_batch | conflicts, "rejected").when(present, "already_present")
                .otherwise("accepted").alias("k")).groupBy("k").agg(F.count("*").alias("n")).collect()}
            rejects = records.where("kind = 'reject'").select("reason", "source_file", "line_no", "record", "detail")
            by_reason = {r["reason"]: r["n"] for r in rejects.groupBy("reason").agg(F.count("*").alias("n")).collect()}
            if counts.get("rejected"):
                by_reason["duplicate_id"] = counts["rejected"]  # a reason only this stage gives, not the readers
                duplicates = with_original_records(spark, duplicates, cfg)
            rejects = rejects.unionByName(duplicates.drop("text_hash"))

        stats.counts["read"] = records.count()
        stats.counts["accepted"] = counts.get("accepted", 0)
        stats.counts["already_present"] = counts.get("already_present", 0)
        stats.counts["rejected"] = sum(by_reason.values())
        for reason, n in by_reason.items():
            stats.counts[f"rejected.{reason}"] = n

        raw_rows = accepted.select("doc_id", "text", "source", "metadata", "text_hash", "n_chars",
                                   F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("created_at"))
        with stats.timer("write"):
            ctx.append("raw_docs", raw_rows, fingerprint=fingerprint)
            write_rejects(ctx, rejects, fingerprint)
    c = stats.counts
    if c["read"] != c["accepted"] + c["rejected"] + c["already_present"]:
        raise RuntimeError(f"ingest counts do not reconcile: {dict(c)}")
    return stats.as_dict()

