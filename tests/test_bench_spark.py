"""`python -m refinex_spark.bench spark` end to end on 1,000 documents, in its own process (it
starts and stops its own Spark session): every document is distilled, and the printed ratios
are the ones its own timings give."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


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
    # Seconds are printed to 0.01 s: about 1% of the smallest of them here, hence the tolerances.
    assert d["ratio"] == pytest.approx(d["stage_docs_per_s"] / d["loop_docs_per_s"], rel=0.002)
    assert d["two_process_ratio"] == pytest.approx(d["loop_seconds"] / d["two_process_loop_seconds"], rel=0.03)
    assert d["stage_vs_two_process"] == pytest.approx(d["ratio"] / d["two_process_ratio"], rel=0.03)
    assert d["target_ratio"] == 1.6 and d["pass"] is (d["ratio"] >= 1.6)
    assert report["ingest"]["docs_per_s"] == pytest.approx(1000 / report["ingest"]["seconds"], rel=0.01)
    c = report["commit"]
    assert c["overhead_s_per_commit"] == pytest.approx(c["delta_commit_s_median"] - c["plain_parquet_write_s_median"],
                                                       abs=0.002)
