"""Every stage of the demo on a Spark Connect session (Databricks serverless and shared clusters
offer nothing else): no SparkContext, no JVM handle, only the DataFrame API over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("connect")
    env = {**os.environ, "SPARK_REMOTE": "local[2]"}  # a Connect server in that process
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("connect_demo.py")), str(work)],
                          capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_session_is_spark_connect(report):
    assert report["session"] == "pyspark.sql.connect.session" and report["master"].startswith("local")


def test_a_server_elsewhere_counts_as_a_cluster(report):
    """Its tasks cannot see this machine's relative paths, whatever the server's own master."""
    assert report["remote_master"] == "sc://elsewhere:15002"
    assert "relative" in report["relative_path_refused"]


def test_every_stage_runs_and_counts_reconcile(report):
    first = report["runs"][0]
    assert first["ingest"]["accepted"] == 30 and first["ingest"]["read"] == 30 + first["ingest"]["rejected"]
    assert first["expert"]["accepted"] == 30
    assert first["distill"]["docs"] == 30
    assert first["refine"]["docs"] == first["refine"]["pending"] == 30
    rows = report["rows"][0]
    assert rows["raw_docs"] == 30 and rows["refined_docs"] == 30 == sum(report["statuses"].values())


def test_a_rerun_adds_no_rows(report):
    assert report["rows"][1] == report["rows"][0]
    again = report["runs"][1]
    assert again["ingest"]["accepted"] == 0 and again["distill"]["docs"] == 0 and again["refine"]["pending"] == 0


def test_export_sft_writes_every_kept_sample(report):
    assert report["exported"] == report["kept"] == report["sft_lines"] > 0
