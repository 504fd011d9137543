"""`python -m refinex_spark.bench spark` end to end on 1,000 documents, in its own process (it
starts and stops its own Spark session): every document is distilled, and the printed ratios
are the ones its own timings give."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rounding import matches, printed, quotient


@pytest.fixture(scope="module")
def report() -> dict:
    out = subprocess.run([sys.executable, "-m", "refinex_spark.bench", "spark", "--docs", "1000", "--commits", "2"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return json.loads(out)


def test_the_stage_distils_every_document(report):
    assert report["benchmark"] == "spark" and report["docs"] == 1000
    assert report["distill"]["docs_distilled"] == 1000


def test_ratios_follow_from_the_printed_timings(report):
    d = report["distill"]
    # Every figure is rounded when printed (seconds to 0.01 s, about 1% of the smallest here),
    # so each check allows exactly what the roundings of its inputs and its output allow.
    assert matches(d["ratio"], 3, quotient(printed(d["stage_docs_per_s"], 1), printed(d["loop_docs_per_s"], 1)))
    assert matches(d["two_process_ratio"], 3,
                   quotient(printed(d["loop_seconds"], 2), printed(d["two_process_loop_seconds"], 2)))
    assert matches(d["stage_vs_two_process"], 3,
                   quotient(printed(d["ratio"], 3), printed(d["two_process_ratio"], 3)))
    assert d["target_ratio"] == 1.6
    if abs(d["ratio"] - 1.6) > 0.0005:  # else rounding hides which side of the target it is on
        assert d["pass"] is (d["ratio"] >= 1.6)
    ingest = report["ingest"]
    assert matches(ingest["docs_per_s"], 1, quotient((1000, 0), printed(ingest["seconds"], 2)))
    assert matches(ingest["split_speedup"], 3,
                   quotient(printed(ingest["one_task_seconds"], 2), printed(ingest["seconds"], 2)))
    c = report["commit"]
    assert matches(c["overhead_s_per_commit"], 3,
                   (c["delta_commit_s_median"] - c["plain_parquet_write_s_median"], 0.001))
