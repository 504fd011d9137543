"""The demo (ingest, expert import, distill, train tiny, refine) twice on a Spark Connect session,
then export-sft and an SQL query over the lake's views; prints JSON. Run by test_spark_connect.py in its own
process: a local Connect server starts its own SparkContext, which the tests' classic session
(one per process) would conflict with. The session comes from `open_run`, as in a notebook or
the CLI, with SPARK_REMOTE set.

    SPARK_REMOTE=local[2] python tests/connect_demo.py WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from refinex_spark.config import CONF_DIR, load_config
from refinex_spark.jobs import demo, export_sft
from refinex_spark.lake import LakeError, resolve_root
from refinex_spark.runtime import open_run
from refinex_spark.schemas import TABLES
from refinex_spark.spark_session import spark_master


def main(work: Path) -> dict:
    config = load_config(files=[CONF_DIR / "demo.yaml"], overrides=[
        f"lake.path={work / 'lake'}", f"train.output_dir={work / 'model'}", f"model.path={work / 'model'}",
        "spark.conf.spark.sql.shuffle.partitions=2"])
    runs, rows = [], []
    for _ in range(2):
        ctx = open_run(config, "demo")
        spark, lake = ctx.spark, ctx.lake
        runs.append(demo.run(ctx, n_docs=30, workdir=str(work / "data"))["stages"])
        rows.append({t: lake.read(t).count() for t in TABLES if lake.exists(t)})
    exported = export_sft.run(ctx.for_stage("export-sft"), str(work / "sft"))["counts"]["samples"]
    lake.register_views(spark)
    kept = spark.sql("SELECT count(*) AS n FROM distill_samples WHERE kept").collect()[0]["n"]
    statuses = {r["status"]: r["n"] for r in spark.sql(
        "SELECT status, count(*) AS n FROM refined_docs GROUP BY status").collect()}
    master = spark_master(spark)
    os.environ["SPARK_REMOTE"] = "sc://elsewhere:15002"  # as seen from a client of a server elsewhere
    remote_master = spark_master(spark)
    try:
        resolve_root("relative/lake", remote_master)
        refused = ""
    except LakeError as e:
        refused = str(e)
    return {"session": type(spark).__module__, "master": master, "runs": runs, "rows": rows,
            "remote_master": remote_master, "relative_path_refused": refused,
            "statuses": statuses,
            "exported": exported, "kept": kept, "sft_lines": sum(
                len(p.read_text().splitlines()) for p in (work / "sft").glob("part-*.json"))}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
