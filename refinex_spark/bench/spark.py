"""`python -m refinex_spark.bench spark`: the Spark stages against the core in one process.

Prints one JSON object:
- distill: stage docs/s on local[2] over N synthetic docs vs `distill()` in a plain loop over
  the same docs in this process, and their ratio (target >= 1.6 on 2 cores). The loop runs half
  its docs before the Spark work and half after, so a shared machine's drift in speed over the
  minutes of a run weighs on both sides of the ratio alike; beside it the
  same loop split over two forked processes, the most any 2-process run gets out of this
  machine now (shared machines give less than two full cores), and the stage's share of it;
- ingest: docs/s of the ingest stage (files -> raw_docs), reading the one input file in splits, and
  its speedup over reading it whole in one task: after an untimed ingest of a small file (the
  session's first job pays for starting the JVM's and Python's workers), each is timed twice, in
  the order split, whole, whole, split, each into a lake of its own, and the best of each is taken;
- commit: seconds per Delta commit of a small frame vs writing the same frame as plain Parquet.
Both sides of every ratio run in this one invocation, on the same documents.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

from ..config import load_config
from ..distill import distill
from ..jobs import demo, distill as distill_job, expert_import, ingest
from ..lake import Lake
from ..runtime import RunContext, StageStats, new_run_id, open_run
from ..synth import generate_corpus

TARGET_RATIO = 1.6

_corpus: tuple = ()  # (docs, config) in each forked loop process


def _keep_corpus(docs: list, config) -> None:
    global _corpus
    _corpus = (docs, config)


def _loop_s(docs: list, config) -> float:
    t = time.perf_counter()
    for d in docs:
        distill(d.raw, d.expert, config.distill, config.chunking)
    return time.perf_counter() - t


def _distill_every_other(offset: int) -> None:
    docs, config = _corpus
    _loop_s(docs[offset::2], config)


def _two_process_loop_s(docs: list, config) -> float:
    """Seconds for the plain loop over docs split between two processes.

    Forked before Spark starts, so there is nothing to fork but Python, and the children inherit
    the corpus instead of unpickling 300 MB of it.
    """
    with multiprocessing.get_context("fork").Pool(2, _keep_corpus, (docs, config)) as pool:
        t = time.perf_counter()
        pool.map(_distill_every_other, [0, 1])
        return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m refinex_spark.bench spark")
    ap.add_argument("--docs", type=_at_least_one, default=100_000)
    ap.add_argument("--min-chars", type=_at_least_one, default=500)
    ap.add_argument("--max-chars", type=_at_least_one, default=4000)
    ap.add_argument("--commits", type=_at_least_one, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="refinex-bench-spark-") as work:
        result = _measure(args, Path(work))
    print(json.dumps(result, indent=2))
    return result


def _at_least_one(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _timed_ingest(ctx: RunContext, config, lake: str, split: bool, paths: list[str]) -> float:
    """Seconds to ingest paths into a new lake, reading each file in splits or whole in one task."""
    settings = config.model_copy(update={
        "lake": config.lake.model_copy(update={"path": lake}),
        "ingest": config.ingest.model_copy(update={"split_mb": config.ingest.split_mb if split else float(1 << 30)})})
    t = time.perf_counter()
    lake = Lake(ctx.spark, settings.lake)
    ingest.run(RunContext(settings, ctx.spark, lake, StageStats("ingest", new_run_id("ingest"))), paths)
    return time.perf_counter() - t


def _measure(args: argparse.Namespace, work: Path) -> dict:
    config = load_config(env="local", overrides=[f"lake.path={work / 'lake'}",
                                                 "spark.conf.spark.sql.shuffle.partitions=4",
                                                 "spark.conf.spark.ui.showConsoleProgress=false"])
    docs = list(generate_corpus(args.docs, seed=7, target_chars=(args.min_chars, args.max_chars)))
    raw_path, expert_path = demo.write_docs(work / "input", docs)
    total_mb = sum(len(d.raw) for d in docs) / 1e6

    loop_s = _loop_s(docs[0::2], config)  # the other half after the Spark work
    two_s = _two_process_loop_s(docs, config)

    ctx = open_run(config, "ingest")
    warm_up, _ = demo.write_docs(work / "warm-up", docs[:100])
    _timed_ingest(ctx, config, str(work / "lake-warm-up"), True, [str(warm_up)])
    # Split, whole, whole, split: a drift in the machine's speed falls on both alike. The last one
    # fills the lake the distill stage reads.
    ingest_s = _timed_ingest(ctx, config, str(work / "lake-split"), True, [str(raw_path)])
    whole_s = min(_timed_ingest(ctx, config, str(work / f"lake-whole-{i}"), False, [str(raw_path)]) for i in (1, 2))
    ingest_s = min(ingest_s, _timed_ingest(ctx, config, config.lake.path, True, [str(raw_path)]))
    expert_import.run(ctx.for_stage("expert"), str(expert_path))
    t = time.perf_counter()
    distilled = distill_job.run(ctx.for_stage("distill"))["counts"]["docs"]
    stage_s = time.perf_counter() - t

    small = ctx.spark.createDataFrame([(f"d{i}", "x", "s", None, "h", 1) for i in range(100)],
                                      "doc_id string, text string, source string, metadata string, "
                                      "text_hash string, n_chars long")
    small = small.selectExpr("*", "'bench' AS run_id", "current_timestamp() AS created_at").cache()
    small.count()
    commit_s, parquet_s = [], []
    for i in range(args.commits):
        t = time.perf_counter()
        ctx.lake.append("raw_docs", small, stage="bench", run_id=f"bench-{i}", fingerprint="bench",
                        txn_app_id="bench-commit", txn_version=1000 + i)
        commit_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        small.write.mode("overwrite").parquet(str(work / f"plain-{i}"))
        parquet_s.append(time.perf_counter() - t)
    ctx.spark.stop()
    loop_s += _loop_s(docs[1::2], config)

    stage_dps, loop_dps, two_dps = args.docs / stage_s, args.docs / loop_s, args.docs / two_s
    return {
        "benchmark": "spark",
        "master": config.spark.master,
        "docs": args.docs,
        "input_mb": round(total_mb, 2),
        "distill": {
            "docs_distilled": distilled, "stage_seconds": round(stage_s, 2), "stage_docs_per_s": round(stage_dps, 1),
            "loop_seconds": round(loop_s, 2), "loop_docs_per_s": round(loop_dps, 1),
            "ratio": round(stage_dps / loop_dps, 3), "target_ratio": TARGET_RATIO,
            "pass": stage_dps / loop_dps >= TARGET_RATIO,  # unrounded: 1.5996 prints as 1.6 and fails
            "two_process_loop_seconds": round(two_s, 2), "two_process_ratio": round(two_dps / loop_dps, 3),
            "stage_vs_two_process": round(stage_dps / two_dps, 3),
        },
        "ingest": {"seconds": round(ingest_s, 2), "docs_per_s": round(args.docs / ingest_s, 1),
                   "mb_per_s": round(total_mb / ingest_s, 2), "split_mb": config.ingest.split_mb,
                   "one_task_seconds": round(whole_s, 2), "split_speedup": round(whole_s / ingest_s, 3)},
        "commit": {
            "rows": 100,
            "delta_commit_s_median": round(sorted(commit_s)[len(commit_s) // 2], 3),
            "plain_parquet_write_s_median": round(sorted(parquet_s)[len(parquet_s) // 2], 3),
            "overhead_s_per_commit": round(sorted(commit_s)[len(commit_s) // 2]
                                           - sorted(parquet_s)[len(parquet_s) // 2], 3),
        },
    }
