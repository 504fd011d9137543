"""Audit views: exact results on hand-made tables, reconciliation with the demo lake, README queries."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from refinex_spark.jobs import sql
from refinex_spark.schemas import TABLES
from refinex_spark.views import VIEWS, register_views

from audit_lake import context

pytestmark = pytest.mark.spark
README = Path(__file__).resolve().parent.parent / "README.md"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def base_views(spark, rows: dict[str, list[dict]]) -> None:
    """Every table as a temp view of the given rows (missing columns null), as jobs/sql.register leaves them."""
    for name, spec in TABLES.items():
        data = [tuple(r.get(c, T0 if c == "created_at" else None) for c in spec.column_names)
                for r in rows.get(name, [])]
        spark.createDataFrame(data, spec.spark_schema()).createOrReplaceTempView(name)


def outcomes(*items: tuple[str, bool, str]) -> str:
    return json.dumps([{"op": op, "applied": applied, "reason": reason} for op, applied, reason in items])


def refined(doc_id: str, status: str, fraction: float | None, ops: str | None, run_id: str = "refine-1") -> dict:
    return {"doc_id": doc_id, "text_hash": f"h-{doc_id}", "refined_text": None if status == "error" else "x",
            "program": "keep_all()", "op_outcomes": ops, "status": status, "deleted_fraction": fraction,
            "model_id": "m", "prompt_version": "refine-v1", "fingerprint": "fp1", "run_id": run_id}


@pytest.fixture
def small_lake(spark):
    base_views(spark, {
        "raw_docs": [{"doc_id": d, "text": text, "source": src, "text_hash": f"h-{d}", "n_chars": len(text),
                      "run_id": "ingest-1"}
                     for d, src, text in (("a", "web", "raw a"), ("b", "web", "raw\r\nb"), ("c", "news", "raw c"))],
        "refined_docs": [
            refined("a", "ok", 0.5, outcomes(("remove_lines(start=1, end=2)", True, ""),
                                             ("remove_str(line=0, text='(x)')", True, ""),
                                             ("  remove_str(line=9, text='y')", False, "out_of_range"))),
            refined("b", "fallback", 0.0, outcomes(("remove_lines(start=0, end=0)", False, "chunk_fallback"),
                                                   ("not a call at all", False, "malformed"),
                                                   ("(((", False, "malformed"),
                                                   ("remove_lines(start=1,", False, "malformed"))),
            refined("c", "error", None, None),
            refined("zz", "kept", 0.0, outcomes(("keep_all()", True, "")), run_id="refine-2"),
        ],
        "expert_outputs": [{"doc_id": d, "expert_model": "big", "prompt_version": "expert-v1", "status": s,
                            "tokens": t, "raw_text_hash": f"h-{d}", "run_id": "expert-1"}
                           for d, s, t in (("a", "ok", 10), ("b", "ok", 7), ("c", "error", None))],
        "distill_samples": [
            {"doc_id": d, "fingerprint": "dfp", "chunk_index": i, "start_line": 0, "end_line": 0, "prompt": "",
             "program": "", "n_ops": 0, "kept": reason is None, "drop_reason": reason, "doc_fidelity": fid,
             "doc_deleted_fraction": frac, "doc_illegal_fraction": 0.0, "expert_model": "big", "run_id": "distill-1"}
            for d, i, reason, fid, frac in (("a", 0, None, 1.0, 0.2), ("a", 1, "too_many_ops", 1.0, 0.2),
                                            ("a", 2, None, 1.0, 0.2), ("b", 0, "illegal_edits", 0.5, 0.4),
                                            ("b", 1, None, 0.5, 0.4),
                                            ("c", -1, "error: ValueError: boom", None, None))]
        # a's samples of an older expert output, superseded: in run_summary's history, not distill_summary
        + [{"doc_id": "a", "fingerprint": "dfp", "chunk_index": 0, "start_line": 0, "end_line": 0, "prompt": "",
            "program": "", "n_ops": 0, "kept": False, "drop_reason": "illegal_edits", "doc_fidelity": 0.1,
            "doc_deleted_fraction": 0.9, "doc_illegal_fraction": 0.5, "expert_model": "small",
            "run_id": "distill-0", "created_at": datetime(2025, 1, 1, tzinfo=timezone.utc)}],
    })
    assert register_views(spark) == list(VIEWS)
    return spark


def rows(spark, query: str) -> list[dict]:
    return [r.asDict(recursive=True) for r in spark.sql(query).collect()]


def test_audit_joins_each_refined_row_to_its_raw_text(small_lake) -> None:
    got = {r["doc_id"]: r for r in rows(small_lake, "SELECT * FROM audit")}
    assert sorted(got) == ["a", "b", "c", "zz"]
    assert (got["a"]["raw_text"], got["a"]["source"], got["a"]["status"]) == ("raw a", "web", "ok")
    assert got["c"]["source"] == "news" and got["c"]["deleted_fraction"] is None
    assert got["zz"]["raw_text"] is None  # no raw row: still listed, not dropped by the join
    assert got["b"]["raw_chars"] == 5  # "raw\r\nb": "\r\n" is one char, as in refined_chars and deleted_fraction


def test_op_stats_counts_kinds_by_outcome(small_lake) -> None:
    got = {(r["kind"], r["applied"], r["reason"]): (r["ops"], r["docs"]) for r in rows(small_lake, "SELECT * FROM op_stats")}
    assert got == {
        ("remove_lines", True, None): (1, 1),
        ("remove_str", True, None): (1, 1),
        ("remove_str", False, "out_of_range"): (1, 1),
        ("remove_lines", False, "chunk_fallback"): (1, 1),
        ("(unparsed)", False, "malformed"): (3, 1),  # "remove_lines(start=1," too: it parsed as nothing
        ("keep_all", True, None): (1, 1),
    }


def test_run_summary_has_one_row_per_stage_run(small_lake) -> None:
    got = {r["run_id"]: r for r in rows(small_lake, "SELECT * FROM run_summary")}
    assert sorted(got) == ["distill-0", "distill-1", "expert-1", "ingest-1", "refine-1", "refine-2"]
    r1 = got["refine-1"]
    assert (r1["stage"], r1["rows"], r1["docs"], r1["model"], r1["fingerprint"]) == ("refine", 3, 3, "m", "fp1")
    assert r1["statuses"] == {"error": 1, "fallback": 1, "ok": 1}
    assert (r1["deleted_fraction_p50"], r1["deleted_fraction_max"]) == (0.0, 0.5)
    e = got["expert-1"]
    assert (e["stage"], e["tokens"], e["statuses"], e["model"]) == ("expert", 17, {"ok": 2, "error": 1}, "big")
    d = got["distill-1"]
    # Quantiles over documents (a's two chunks count once), statuses over samples.
    assert (d["rows"], d["docs"], d["deleted_fraction_max"], d["deleted_fraction_p50"]) == (6, 3, 0.4, 0.2)
    assert d["statuses"] == {"kept": 3, "too_many_ops": 1, "illegal_edits": 1, "error": 1}
    assert (got["ingest-1"]["rows"], got["ingest-1"]["statuses"]) == (3, None)


def test_distill_summary_groups_by_reason(small_lake) -> None:
    got = {r["reason"]: (r["kept"], r["samples"], r["docs"], r["avg_doc_fidelity"], r["avg_doc_deleted_fraction"])
           for r in rows(small_lake, "SELECT * FROM distill_summary")}
    # Averages over documents: a's two kept chunks count once (per sample it would be 0.8333 and 0.2667).
    assert got == {"kept": (True, 3, 2, 0.75, pytest.approx(0.3)), "too_many_ops": (False, 1, 1, 1.0, 0.2),
                   "illegal_edits": (False, 1, 1, 0.5, 0.4), "error": (False, 1, 1, None, None)}


def test_views_exist_over_empty_tables(spark) -> None:
    base_views(spark, {})
    register_views(spark)
    for name in VIEWS:
        assert spark.table(name).count() == 0


# --- the demo lake ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(spark, demo_lake):
    ctx = context(spark, demo_lake, "sql")
    names = sql.register(ctx)
    assert names == [*TABLES, *VIEWS]
    return ctx


def kind_of(op: str, reason: str) -> str:
    m = re.match(r"\s*([A-Za-z_]\w*)\s*\(", op)
    return m.group(1) if m and reason != "malformed" else "(unparsed)"


def test_views_reconcile_with_the_base_tables(demo) -> None:
    spark = demo.spark
    refined = spark.table("refined_docs").toPandas()
    audit = spark.table("audit").toPandas()
    assert len(audit) == len(refined) > 0
    raw = spark.table("raw_docs").toPandas().set_index(["doc_id", "text_hash"])
    for row in audit.itertuples():
        assert row.raw_text == raw.loc[(row.doc_id, row.text_hash), "text"]

    expected = Counter()
    for ops in refined["op_outcomes"].dropna():
        for o in json.loads(ops):
            expected[(kind_of(o["op"], o["reason"]), o["applied"])] += 1
    op_stats = spark.table("op_stats").toPandas()
    assert {k: int(v) for k, v in op_stats.groupby(["kind", "applied"])["ops"].sum().items()} == dict(expected)

    summary = spark.sql("SELECT * FROM run_summary WHERE stage = 'refine'").toPandas()
    for run in summary.itertuples():
        mine = refined[refined["run_id"] == run.run_id]
        assert run.rows == len(mine)
        assert dict(run.statuses) == dict(Counter(mine["status"]))
        fractions = mine["deleted_fraction"].dropna()
        assert run.deleted_fraction_p50 == np.quantile(fractions, 0.5, method="inverted_cdf")

    distill = spark.table("distill_samples").toPandas()
    by_reason = spark.table("distill_summary").toPandas()
    assert by_reason["samples"].sum() == len(distill)
    assert by_reason.loc[by_reason["kept"], "samples"].sum() == distill["kept"].sum()


def readme_queries() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Audits"):]
    return re.findall(r'^refinex-spark sql "(.+)"$', section, flags=re.MULTILINE)


def test_readme_audit_queries_run_on_the_demo_lake(demo) -> None:
    queries = readme_queries()
    assert len(queries) >= len(VIEWS)
    for name in VIEWS:
        assert any(re.search(rf"\b{name}\b", q) for q in queries), f"README has no example query for {name}"
    for query in queries:
        assert demo.spark.sql(query).collect(), f"no rows: {query}"
