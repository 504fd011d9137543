"""report: the lake -> report.html (figures as embedded PNGs, example diffs) and report.json.

Spark SQL over the audit views computes small aggregates on the cluster; only those (and a
few example documents) reach the driver, where `refinex_spark.report` draws and renders them.
Every table is read at the version it has when the stage starts; the run-over-run figure
compares refined_docs at that version with the version before it (Delta time travel).

refined_docs holds a row per document for every generation (model and fingerprint) that refined
it: a retrained model refines the corpus again. The report is of one generation, the newest
unless `model_id` / `fingerprint` pick another, and of one distill fingerprint (settings), the
newest unless `distill_fingerprint` picks another, so no document counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.errors import PySparkException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..lake import is_local, resolve_root
from ..report import BINS, ReportInput, Snapshot, write_report
from ..runtime import RunContext
from ..schemas import TABLES
from ..views import register_views
from . import sql
from .distill import current


def snapshot(refined: DataFrame, version: int | None) -> Snapshot:
    """Deleted-fraction histogram (bins as `report.bin_of`) and status counts of refined_docs rows."""
    # Clamped both ways: ProX's normalize can lengthen a text (a negative fraction) into the first bin.
    bin_col = F.greatest(F.least(F.floor(F.col("deleted_fraction") * BINS).cast("int"), F.lit(BINS - 1)),
                         F.lit(0)).alias("bin")
    histogram = (refined.where(F.col("deleted_fraction").isNotNull()).groupBy(bin_col)
                 .agg(F.count("*").alias("docs")).toPandas())
    statuses = refined.groupBy("status").agg(F.count("*").alias("docs")).toPandas()
    return Snapshot(version, histogram, statuses)


def _run_of(commit: dict) -> str | None:
    meta = commit["user_metadata"]
    return meta.get("run_id") if isinstance(meta, dict) else None


def _before_last_run(history: list[dict]) -> int | None:
    """The version before the last run's first commit (refine commits once per slice). Commits of no
    run (VACUUM, OPTIMIZE, auto-compaction) are no run of their own, wherever they fall."""
    last = next((run for c in history if (run := _run_of(c)) is not None), None)
    first = min((c["version"] for c in history if last is not None and _run_of(c) == last), default=0)
    return first - 1 if first > 0 else None


def _newest_first(rows: DataFrame, *keys: str) -> list:
    """The distinct values of `keys`, the one with the newest row first (ties by the keys)."""
    return (rows.groupBy(*keys).agg(F.max("created_at").alias("last"))
            .orderBy(F.col("last").desc(), *keys).collect())


def generation(refined: DataFrame, model_id: str | None = None, fingerprint: str | None = None
               ) -> tuple[tuple[str, str] | None, int]:
    """The (model_id, fingerprint) of the newest refined_docs row matching the given ones (None: no rows at
    all), and how many generations the table holds. A ValueError names them if none matches."""
    found = _newest_first(refined, "model_id", "fingerprint")
    matching = [(r["model_id"], r["fingerprint"]) for r in found
                if model_id in (None, r["model_id"]) and fingerprint in (None, r["fingerprint"])]
    if (model_id is not None or fingerprint is not None) and not matching:
        have = ", ".join(f"{r['model_id']} / {r['fingerprint']}" for r in found) or "none"
        raise ValueError(f"no refined_docs rows of model {model_id!r} / fingerprint {fingerprint!r} "
                         f"(generations: {have})")
    return (matching[0] if matching else None), len(found)


def pick_distill_fingerprint(samples: DataFrame, fingerprint: str | None = None) -> str | None:
    """The distill fingerprint with the newest samples, or `fingerprint` (None: no samples at all);
    a ValueError names those present if the given one has none."""
    found = [r["fingerprint"] for r in _newest_first(samples, "fingerprint")]
    if fingerprint is not None and fingerprint not in found:
        raise ValueError(f"no distill_samples rows of fingerprint {fingerprint!r} "
                         f"(fingerprints: {', '.join(found) or 'none'})")
    return fingerprint if fingerprint is not None else next(iter(found), None)


def of_generation(refined: DataFrame, chosen: tuple[str, str] | None) -> DataFrame:
    """The refined_docs rows of one (model_id, fingerprint) generation; all of them for None."""
    if chosen is None:
        return refined
    return refined.where((F.col("model_id") == chosen[0]) & (F.col("fingerprint") == chosen[1]))


_MISSING_FILE = ("PATH_NOT_FOUND", "FAILED_READ_FILE", "DELTA_FILE_NOT_FOUND")  # Spark error conditions


def _previous_snapshot(lake, version: int | None,
                       generation: tuple[str, str] | None) -> tuple[Snapshot | None, str | None]:
    """refined_docs before the last run, or None and why: a VACUUM after a delete (`refine --retry-errors`)
    may have removed files that version reads, and the rest of the report does not need it."""
    if version is None:
        return None, None
    try:
        return snapshot(of_generation(lake.read("refined_docs", version=version), generation), version), None
    except Exception as e:  # noqa: BLE001 - only a missing file is let through, below
        # delta-rs' file list: Spark's PATH_NOT_FOUND when reading; delta-spark: the read fails in the job.
        condition = (e.getCondition() if isinstance(e, PySparkException) else None) or ""
        if not (condition.startswith(_MISSING_FILE) or "FileNotFound" in str(e)):
            raise
        return None, f"refined_docs version {version} is no longer readable (vacuumed?): {str(e)[:300]}"


@dataclass(frozen=True)
class Chosen:
    refine: tuple[str, str] | None  # (model_id, fingerprint) of the refined_docs generation
    generations: int  # how many refined_docs holds
    distill_fingerprint: str | None


def choose(spark, model_id: str | None = None, fingerprint: str | None = None,
           distill_fingerprint: str | None = None) -> Chosen:
    """Narrow the refined_docs view to one generation and the distill_samples view to one distill
    fingerprint (the newest unless named) and each document's current samples, and define the audit
    views again over them, so that no document counts twice in anything read from the views. The
    report and the notebooks use it."""
    refine, generations = generation(spark.table("refined_docs"), model_id, fingerprint)
    if refine is not None:
        of_generation(spark.table("refined_docs"), refine).createOrReplaceTempView("refined_docs")
    distilled = pick_distill_fingerprint(spark.table("distill_samples"), distill_fingerprint)
    if distilled is not None:
        current(spark.table("distill_samples").where(F.col("fingerprint") == distilled)) \
            .createOrReplaceTempView("distill_samples")
    register_views(spark)
    return Chosen(refine, generations, distilled)


def run(ctx: RunContext, output_dir: str, examples_per_status: int = 3, max_example_chars: int = 20_000,
        seed: int = 0, model_id: str | None = None, fingerprint: str | None = None,
        distill_fingerprint: str | None = None) -> dict:
    if examples_per_status < 0 or max_example_chars < 1:
        raise ValueError("examples_per_status must be >= 0 and max_example_chars >= 1")
    if not is_local(output_dir) and not output_dir.lower().startswith("file:"):
        # Path("s3://b/r") would quietly be the local folder s3:/b/r
        raise ValueError(f"report output {output_dir!r} is a URI; the report is written on the driver through the "
                         "file system: use a local path, or a mount (e.g. /dbfs/..., /Volumes/...)")
    output_dir = resolve_root(output_dir, what="report output")  # file:///p and file://localhost/p too
    spark, lake, stats = ctx.spark, ctx.lake, ctx.stats
    versions = {t: lake.version(t) for t in TABLES}
    with stats.timer("aggregate"):
        sql.register(ctx, {t: v for t, v in versions.items() if v is not None})
        runs = spark.sql("SELECT * FROM run_summary ORDER BY started_at, stage").toPandas()  # every run
        chosen = choose(spark, model_id, fingerprint, distill_fingerprint)
        refined_version = versions["refined_docs"]
        current = snapshot(spark.table("refined_docs"), refined_version)
        # The history as of the pinned version: a refine committing since must not become the baseline.
        before = _before_last_run([c for c in lake.history("refined_docs")
                                   if refined_version is not None and c["version"] <= refined_version])
        previous, unreadable = _previous_snapshot(lake, before, chosen.refine)
        ops = spark.table("op_stats").toPandas()
        sources = spark.sql("SELECT coalesce(source, '(unknown)') AS source, status, count(*) AS docs "
                            "FROM audit GROUP BY 1, 2").toPandas()
        reasons = spark.sql("SELECT reason, sum(samples) AS samples FROM distill_summary GROUP BY reason").toPandas()
        # A few documents per status, picked by a seeded hash so reruns show the same ones.
        examples = spark.sql(f"""
            SELECT doc_id, source, status, deleted_fraction, raw_text, refined_text, op_outcomes, error, model_id,
                   fingerprint FROM (
              SELECT *, row_number() OVER (PARTITION BY status ORDER BY xxhash64(doc_id, {int(seed)})) AS pick
              FROM audit WHERE coalesce(raw_chars, 0) <= {int(max_example_chars)})
            WHERE pick <= {int(examples_per_status)}
            ORDER BY status, deleted_fraction DESC, doc_id""").toPandas()
    refine = chosen.refine or (None, None)
    meta = {"lake": lake.root, "engine": lake.engine,
            "model_id": refine[0], "fingerprint": refine[1],
            "generations_in_table": chosen.generations, "distill_fingerprint": chosen.distill_fingerprint,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": ctx.run_id,
            **{f"version.{t}": v for t, v in versions.items()}, "previous_version_unreadable": unreadable}
    inp = ReportInput(meta=meta, current=current, previous=previous, ops=ops, sources=sources, distill=reasons,
                      runs=runs, examples=examples, program=ctx.config.program)
    with stats.timer("render"):
        html_path, json_path = write_report(inp, output_dir)
    stats.counts["docs"] = int(current.statuses["docs"].sum()) if not current.statuses.empty else 0
    stats.counts["examples"] = len(examples)
    stats.info.update(html=str(html_path), json=str(json_path), versions=versions,
                      previous_version_unreadable=unreadable,
                      model_id=refine[0], fingerprint=refine[1], distill_fingerprint=chosen.distill_fingerprint)
    return stats.as_dict()
