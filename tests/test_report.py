"""The report: figures and their data, self-contained HTML, the Spark stage on the demo lake, Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from refinex_spark import cli
from refinex_spark.diff import compute_diff
from refinex_spark.jobs import report as report_stage
from refinex_spark.report import BINS, ReportInput, Snapshot, bin_edges, bin_of, build_report

from audit_lake import ORACLE_MODEL, audited_lake_config, context  # noqa: F401 - audited_lake_config is a fixture

GOLDEN = Path(__file__).parent / "golden" / "report.json"
FIGURES = ["deleted_fraction", "op_kinds", "status", "sources", "distill_reasons", "run_over_run"]
_IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
CHROMIUM = "/usr/bin/chromium"


def outcomes(*items: tuple[str, bool, str]) -> str:
    return json.dumps([{"op": op, "applied": applied, "reason": reason} for op, applied, reason in items])


def sample_input() -> ReportInput:
    raw = "Title\n<script>alert('x')</script> & more\nBody text.\nShare this"
    ops = outcomes(("remove_str(line=1, text=\"<script>alert('x')</script> \")", True, ""),
                   ("remove_lines(start=3, end=3)", True, ""), ("remove_str(line=2, text='zz')", False,
                                                                  "text_not_in_line"))
    return ReportInput(
        meta={"lake": "/data/lake", "generated_at": "2026-01-02T03:04:05+00:00", "version.refined_docs": 3},
        current=Snapshot(3, pd.DataFrame({"bin": [0, 4, 19], "docs": [5, 2, 1]}),
                         pd.DataFrame({"status": ["ok", "kept", "error"], "docs": [3, 5, 1]})),
        previous=Snapshot(2, pd.DataFrame({"bin": [0], "docs": [4]}), pd.DataFrame({"status": ["kept"], "docs": [4]})),
        ops=pd.DataFrame({"kind": ["remove_lines", "remove_str", "remove_str", "(unparsed)"],
                          "applied": [True, True, False, False],
                          "reason": [None, None, "text_not_in_line", "malformed"],
                          "ops": [3, 2, 1, 4], "docs": [2, 1, 1, 1]}),
        sources=pd.DataFrame({"source": ["web", "web", "news", "forum"], "status": ["ok", "kept", "kept", "error"],
                              "docs": [3, 4, 1, 1]}),
        distill=pd.DataFrame({"reason": ["kept", "illegal_edits", "too_many_ops"], "samples": [10, 3, 1]}),
        runs=pd.DataFrame([{"run_id": "refine-1", "stage": "refine", "rows": 9, "statuses": {"ok": 3, "kept": 5},
                            "deleted_fraction_p50": 0.0, "tokens": None}]),
        examples=pd.DataFrame([
            {"doc_id": "d1", "source": "web", "status": "ok", "deleted_fraction": 0.4, "raw_text": raw,
             "refined_text": "Title\n& more\nBody text.", "op_outcomes": ops, "error": None, "model_id": "m1",
             "fingerprint": "fp1"},
            {"doc_id": "d<2>", "source": "forum", "status": "error", "deleted_fraction": math.nan, "raw_text": "x",
             "refined_text": None, "op_outcomes": None, "error": "Boom <b>", "model_id": "m1",
             "fingerprint": "fp1"},
        ]),
    )


def images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in _IMG.findall(page)]


def test_report_json_matches_golden() -> None:
    assert build_report(sample_input()).json() == GOLDEN.read_text(encoding="utf-8")


def test_a_text_lengthened_by_normalize_is_in_the_first_bin() -> None:
    assert bin_of(-0.08) == 0 and bin_of(0.0) == 0 and bin_of(1.0) == BINS - 1


def test_run_over_run_compares_with_the_lake_before_the_last_run() -> None:
    from refinex_spark.jobs.report import _before_last_run

    commit = lambda version, run: {"version": version, "user_metadata": {"run_id": run} if run else "by hand"}  # noqa: E731
    # refine commits a slice at a time: versions 7, 6 and 5 are one run's, 4 the one before it
    assert _before_last_run([commit(7, "r2"), commit(6, "r2"), commit(5, "r2"), commit(4, "r1")]) == 4
    # A commit of no run (VACUUM, OPTIMIZE) is no run of its own: the last run is still r1, even with
    # auto-compaction between its slices.
    assert _before_last_run([commit(4, None), commit(3, None), commit(2, "r1"), commit(1, "r0")]) == 1
    assert _before_last_run([commit(6, None), commit(5, "r1"), commit(4, None), commit(3, "r1"), commit(2, None),
                             commit(1, "r0")]) == 2
    assert _before_last_run([commit(2, None), commit(1, "r1"), commit(0, "r1")]) is None
    assert _before_last_run([commit(3, "r1"), commit(2, None), commit(1, "r0")]) == 2  # the same data as r0 left
    assert _before_last_run([commit(1, "r1"), commit(0, "r1")]) is None and _before_last_run([]) is None


def test_figure_data_is_what_the_input_says() -> None:
    figures = {f.id: f.data for f in build_report(sample_input()).figures}
    assert list(figures) == FIGURES
    assert figures["deleted_fraction"]["docs"] == [5, 0, 0, 0, 2] + [0] * 14 + [1]
    assert figures["status"]["docs"] == {"kept": 5, "ok": 3, "error": 1}
    assert figures["op_kinds"]["not_applied_reasons"] == {"malformed": 4, "text_not_in_line": 1}
    assert figures["sources"]["docs"] == {"web": {"ok": 3, "kept": 4}, "forum": {"error": 1}, "news": {"kept": 1}}
    assert figures["run_over_run"]["docs_by_status"] == {"previous": {"kept": 4}, "current": {"kept": 5, "ok": 3,
                                                                                             "error": 1}}


def test_html_is_self_contained_and_escapes_documents() -> None:
    page = build_report(sample_input()).html()
    pictures = images(page)
    assert len(pictures) == len(FIGURES)
    assert all(p.format == "PNG" and p.width > 300 and p.height > 150 for p in pictures)
    # Nothing is loaded from anywhere, and nothing from the documents runs.
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; " in page
    assert "error: Boom &lt;b&gt;" in page and "<h3>d&lt;2&gt;</h3>" in page
    assert page.count('<del style="color:red"') == 2


def test_a_replay_that_differs_from_the_stored_text_is_flagged() -> None:
    inp = sample_input()
    inp.examples.loc[0, "refined_text"] = "something else"
    report = build_report(inp)
    assert [s.get("replay_matches") for _, s in report.examples] == [False, None]
    assert "differs from replaying the applied ops" in report.html()


def test_an_empty_lake_still_renders() -> None:
    empty = lambda *cols: pd.DataFrame({c: [] for c in cols})  # noqa: E731
    inp = ReportInput(meta={}, current=Snapshot(None, empty("bin", "docs"), empty("status", "docs")), previous=None,
                      ops=empty("kind", "applied", "reason", "ops", "docs"), sources=empty("source", "status", "docs"),
                      distill=empty("reason", "samples"), runs=pd.DataFrame(),
                      examples=empty("doc_id", "source", "status", "deleted_fraction", "raw_text", "refined_text",
                                     "op_outcomes", "error", "model_id", "fingerprint"))
    report = build_report(inp)
    assert len(images(report.html())) == len(FIGURES)
    data = json.loads(report.json())
    assert data["figures"][0]["data"]["docs"] == [0] * BINS
    assert data["figures"][-1]["data"] == {"current_version": None, "previous_version": None}
    assert data["examples"] == [] and data["runs"] == []


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(0.0, 1.0), st.sampled_from(bin_edges())))
def test_bins_cover_zero_to_one(fraction: float) -> None:
    b = bin_of(fraction)
    edges = bin_edges()
    assert 0 <= b < BINS
    assert edges[b] <= fraction < edges[b + 1] or (fraction == 1.0 and b == BINS - 1)


# --- the stage on the demo lake --------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_report(spark, audited_lake_config, tmp_path_factory):
    """The report of the audited demo lake (its last refined_docs commit is the oracle's)."""
    ctx = context(spark, audited_lake_config, "report")
    out = tmp_path_factory.mktemp("report")
    result = report_stage.run(ctx, str(out), examples_per_status=2)
    return ctx, result, json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.mark.spark
def test_stage_figures_reconcile_with_the_lake(stage_report) -> None:
    ctx, result, data = stage_report
    lake = ctx.lake
    base = lake.version("refined_docs") - 1
    figures = {f["id"]: f["data"] for f in data["figures"]}
    # Of the newest generation only: the oracle's commit, not the demo model's rows of the same documents.
    assert (result["model_id"], result["fingerprint"]) == (ORACLE_MODEL, "oracle")
    assert (data["meta"]["model_id"], data["meta"]["generations_in_table"]) == (ORACLE_MODEL, 2)
    oracle = lambda df: df[(df.model_id == ORACLE_MODEL) & (df.fingerprint == "oracle")]  # noqa: E731
    now = oracle(lake.read("refined_docs").toPandas())
    before = oracle(lake.read("refined_docs", version=base).toPandas())
    assert result["versions"]["refined_docs"] == base + 1 and result["counts"]["docs"] == len(now) > 0

    assert figures["status"]["docs"] == dict(Counter(now["status"]))
    hist = Counter(bin_of(f) for f in now["deleted_fraction"].dropna())
    assert figures["deleted_fraction"]["docs"] == [hist[b] for b in range(BINS)]
    comparison = figures["run_over_run"]
    assert (comparison["previous_version"], comparison["current_version"]) == (base, base + 1)
    assert comparison["docs_by_status"] == {"previous": dict(Counter(before["status"])),
                                            "current": dict(Counter(now["status"]))}
    raw = lake.read("raw_docs").toPandas()
    sources = now.merge(raw[["doc_id", "text_hash", "source"]], on=["doc_id", "text_hash"])
    assert {s: sum(v.values()) for s, v in figures["sources"]["docs"].items()} == dict(Counter(sources["source"]))
    assert sum(figures["distill_reasons"]["samples"].values()) == lake.read("distill_samples").count()


@pytest.mark.spark
def test_report_of_an_older_generation(spark, audited_lake_config, tmp_path) -> None:
    """--model-id picks the demo model's rows; a model with no rows is refused, naming the generations."""
    ctx = context(spark, audited_lake_config, "report")
    rows = ctx.lake.read("refined_docs").toPandas()
    demo = rows[rows.model_id != ORACLE_MODEL]
    (model,) = set(demo.model_id)
    result = report_stage.run(ctx, str(tmp_path), examples_per_status=1, model_id=model)
    data = json.loads((tmp_path / "report.json").read_text())
    figures = {f["id"]: f["data"] for f in data["figures"]}
    assert result["counts"]["docs"] == len(demo) and figures["status"]["docs"] == dict(Counter(demo.status))
    # The runs table is the lake's: both generations' refine runs, whichever one is reported.
    assert {r["run_id"] for r in data["runs"] if r["stage"] == "refine"} == set(rows.run_id)
    with pytest.raises(ValueError, match=f"generations: {ORACLE_MODEL} / oracle, "):
        report_stage.run(ctx, str(tmp_path), model_id="no-such-model")


@pytest.mark.spark
def test_stage_examples_replay_to_the_stored_text(stage_report) -> None:
    ctx, result, data = stage_report
    examples = data["examples"]
    statuses = Counter(e["status"] for e in examples)
    assert examples and all(n <= 2 for n in statuses.values()) and result["counts"]["examples"] == len(examples)
    refined = ctx.lake.read("refined_docs").toPandas().set_index(["doc_id", "model_id", "fingerprint"])
    raw = ctx.lake.read("raw_docs").toPandas().set_index("doc_id")
    for e in examples:
        assert e.get("replay_matches", True), e
        row = refined.loc[(e["doc_id"], e["model_id"], e["fingerprint"])]
        assert (row["status"], row["error"]) == (e["status"], e.get("error"))
        diff = compute_diff(raw.loc[e["doc_id"], "text"], op_outcomes=row["op_outcomes"])
        assert [o["op"] for o in e.get("ops", [])] == list(diff.ops)
    assert any(o["deleted_chars"] for e in examples for o in e.get("ops", []))


@pytest.mark.spark
def test_report_command(audited_lake_config, tmp_path) -> None:
    out = tmp_path / "out"
    # file://localhost/... is the local path (it was a folder named "localhost" under the current directory)
    assert cli.main(["--set", f"lake.path={audited_lake_config.lake.path}", "report", f"file://localhost{out}",
                     "--examples-per-status", "1"]) == 0
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [f["id"] for f in data["figures"]] == FIGURES
    statuses = [e["status"] for e in data["examples"]]
    assert statuses and len(statuses) == len(set(statuses))  # one per status
    assert len(images((out / "report.html").read_text(encoding="utf-8"))) == len(FIGURES)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.spark
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(stage_report, tmp_path) -> None:
    html_path = Path(stage_report[1]["html"])
    url = html_path.resolve().as_uri()
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", url, profile=tmp_path / "profile")
    page = Image.open(shot).convert("RGB")
    assert page.size == (1200, 3000)
    colors = page.getcolors(maxcolors=1 << 24)
    non_white = sum(n for n, rgb in colors if min(rgb) < 245) / (page.width * page.height)
    assert len(colors) > 200 and non_white > 0.05, (len(colors), non_white)  # plots, not a blank page

    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    assert len(_IMG.findall(dom)) == len(FIGURES)
    assert '<del style="color:red"' in dom


def test_source_names_with_dollar_signs_are_drawn_as_text() -> None:
    """Sources come from file names and input fields: "$x^$" in one is a name, not mathtext (it stopped
    the report with a parse error), and a parseable pair is not drawn as math either."""
    inp = sample_input()
    inp.sources = pd.DataFrame({"source": ["shop $x^$ prices", "prices_$5_to_$10.jsonl", "a$\\foo$b"],
                                "status": ["ok", "kept", "error"], "docs": [1, 2, 3]})
    inp.ops.loc[0, "kind"] = "cost $x^$"
    figures = {f.id: f.data for f in build_report(inp).figures}
    assert figures["sources"]["docs"] == {"a$\\foo$b": {"error": 3}, "prices_$5_to_$10.jsonl": {"kept": 2},
                                          "shop $x^$ prices": {"ok": 1}}
    assert "cost $x^$" in figures["op_kinds"]["applied"]


@pytest.mark.spark
def test_the_newest_distill_fingerprint_and_generation_are_picked(spark) -> None:
    from datetime import datetime, timezone

    at = lambda day: datetime(2026, 1, day, tzinfo=timezone.utc)  # noqa: E731
    samples = spark.createDataFrame([("old", at(1)), ("new", at(3)), ("old", at(2))], "fingerprint string, created_at timestamp")
    assert report_stage.pick_distill_fingerprint(samples) == "new"
    assert report_stage.pick_distill_fingerprint(samples, "old") == "old"
    with pytest.raises(ValueError, match=r"no distill_samples rows of fingerprint 'gone' \(fingerprints: new, old\)"):
        report_stage.pick_distill_fingerprint(samples, "gone")
    assert report_stage.pick_distill_fingerprint(samples.limit(0)) is None
    # Named, on a table with no rows: refused, not an empty report.
    with pytest.raises(ValueError, match=r"fingerprint 'gone' \(fingerprints: none\)"):
        report_stage.pick_distill_fingerprint(samples.limit(0), "gone")
    refined = spark.createDataFrame([], "model_id string, fingerprint string, created_at timestamp")
    assert report_stage.generation(refined) == (None, 0)
    with pytest.raises(ValueError, match=r"model 'm' / fingerprint None \(generations: none\)"):
        report_stage.generation(refined, model_id="m")


@pytest.mark.spark
def test_a_vacuumed_previous_version_leaves_the_report_without_the_comparison(spark, audited_lake_config,
                                                                               tmp_path) -> None:
    """A delete (refine --retry-errors, say) then VACUUM removes the files the version before the last
    run read: the report still renders, and says why the run-over-run figure is missing."""
    import shutil

    from deltalake import DeltaTable

    lake_dir = tmp_path / "lake"
    shutil.copytree(audited_lake_config.lake.path, lake_dir)
    config = audited_lake_config.model_copy(update={"lake": audited_lake_config.lake.model_copy(
        update={"path": str(lake_dir)})})
    ctx = context(spark, config, "report")
    doc = ctx.lake.read("refined_docs").first()["doc_id"]
    assert ctx.lake.delete("refined_docs", {"doc_id": doc}, stage="refine", run_id="retry", fingerprint="x") > 0
    assert DeltaTable(str(lake_dir / "refined_docs")).vacuum(retention_hours=0, enforce_retention_duration=False,
                                                              dry_run=False)
    result = report_stage.run(ctx, str(tmp_path / "report"), examples_per_status=1)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    comparison = {f["id"]: f["data"] for f in data["figures"]}["run_over_run"]
    assert comparison["previous_version"] is None
    deleted_at = next(c["version"] for c in ctx.lake.history("refined_docs") if c["operation"] == "DELETE")
    assert f"version {deleted_at - 1} is no longer readable" in data["meta"]["previous_version_unreadable"]
    assert result["previous_version_unreadable"] == data["meta"]["previous_version_unreadable"]
