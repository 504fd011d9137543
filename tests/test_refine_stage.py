"""The refine stage end to end on local Spark: one row per document, deletion-only output,
incremental reruns, and a run aborted mid-way then rerun leaving the same table as an
uninterrupted run. The model is served over HTTP by tests/refine_server.py, or is a tiny
transformers model built locally."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from refinex_spark.chunking import chunk_document, normalize_newlines
from refinex_spark.config import load_config
from refinex_spark.jobs import ingest, refine
from refinex_spark.jobs.demo import write_docs
from refinex_spark.model.tiny import build_tiny_model
from refinex_spark.refine import is_subsequence
from refinex_spark.synth import generate_corpus

from refine_server import RefineServer

pytestmark = pytest.mark.spark

DOCS = list(generate_corpus(12, seed=11, target_chars=(400, 3000)))
COMPARED = ["doc_id", "text_hash", "refined_text", "program", "op_outcomes", "status", "deleted_fraction",
            "n_chunks", "n_fallback_chunks"]


@pytest.fixture
def ingested(make_ctx, tmp_path):
    raw, _ = write_docs(tmp_path / "in", DOCS)
    ingest.run(make_ctx("ingest"), [str(raw)])
    return make_ctx


def _served(server, *extra):
    return ("model.backend=openai", f"model.base_url={server.url}", "model.served_model=refine-test",
            "chunking.token_budget=200", *extra)


def _table(ctx):
    return ctx.lake.read("refined_docs").toPandas().sort_values("doc_id").reset_index(drop=True)


def _check_rows(df, raw_by_id):
    assert sorted(df["doc_id"]) == sorted(raw_by_id)  # exactly one row per document
    for row in df.itertuples():
        assert row.status in {"ok", "kept", "fallback"}, row.error
        assert is_subsequence(row.refined_text, normalize_newlines(raw_by_id[row.doc_id]))
        json.loads(row.op_outcomes)


def test_refine_served_model_statuses_and_incremental_rerun(ingested, capsys):
    raw_by_id = {d.doc_id: d.raw for d in DOCS}
    with RefineServer() as server:
        capsys.readouterr()
        result = refine.run(ingested("refine", *_served(server)))
        assert result["counts"]["docs"] == len(DOCS)
        ctx = ingested("refine", *_served(server))
        df = _table(ctx)
        _check_rows(df, raw_by_id)
        # Progress as tasks finish, and a last line at the end that adds up to the rows written.
        last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("refine: ")][-1]
        statuses = ", ".join(f"{s} {int((df.status == s).sum())}" for s in ("ok", "kept", "fallback", "error"))
        assert re.fullmatch(rf"refine: \d+s docs {len(DOCS)}/{len(DOCS)} \({statuses}\) \d+\.\d\d MB/s", last), last
        assert {"ok", "fallback"} <= set(df["status"])  # noise removed; ads chunks fell back
        ok = df[df.status == "ok"].iloc[0]
        assert "remove_lines" in ok.program and ok.deleted_fraction > 0
        requests = server.requests
        again = refine.run(ingested("refine", *_served(server)))
        assert again["counts"]["docs"] == 0 and server.requests == requests  # nothing pending, no calls
        assert len(_table(ctx)) == len(DOCS)
        # another model is another refinement: everything is pending for it
        other = refine.run(ingested("refine", *_served(server, "model.served_model=refine-test-2")))
        assert other["counts"]["docs"] == len(DOCS)


def test_a_refused_document_is_an_error_row_and_the_rest_are_refined(ingested):
    with RefineServer() as server:
        server.refuse_marker = DOCS[5].raw.split("\n")[0][:40]
        result = refine.run(ingested("refine", *_served(server)))
        df = _table(ingested("x"))
        requests = server.requests
    assert result["counts"]["docs"] == len(DOCS) and result["counts"]["status.error"] == 1
    # Every chunk asked once, and one empty-document probe: the answers given beside the refusal are
    # kept, not paid for again, and a lone refusal is not asked again.
    chunking = ingested("x", *_served(server)).config.chunking
    assert requests == sum(len(chunk_document(d.raw, chunking)) for d in DOCS) + 1
    bad = df[df.doc_id == DOCS[5].doc_id].iloc[0]
    assert bad.status == "error" and "http_400: refused" in bad.error and bad.refined_text is None
    _check_rows(df[df.doc_id != DOCS[5].doc_id], {d.doc_id: d.raw for d in DOCS if d.doc_id != DOCS[5].doc_id})
    with RefineServer() as server:  # the refusal is gone (a provider's filter changed, say)
        assert refine.run(ingested("refine", *_served(server)))["counts"]["docs"] == 0  # an error row is a row
        again = refine.run(ingested("refine", *_served(server)), retry_errors=True)
        assert again["counts"]["errors_retried"] == 1 and again["counts"]["docs"] == 1 and server.requests >= 1
    after = _table(ingested("x"))
    _check_rows(after, {d.doc_id: d.raw for d in DOCS})  # one row per document, none an error
    others = lambda t: t.drop(columns=["created_at", "run_id"]).set_index("doc_id").drop(index=DOCS[5].doc_id)  # noqa: E731
    pd.testing.assert_frame_equal(others(after), others(df), check_dtype=False)  # the other rows untouched
    commit = ingested("x").lake.history("refined_docs")[1]  # the delete, tagged like every commit
    assert commit["operation"] == "DELETE" and commit["user_metadata"]["stage"] == "refine"


def test_a_run_overtaken_since_its_read_refines_nothing(ingested):
    """Two runs read the same pending documents; the first commits. The second learns it before a
    slice of generation (its commit would be refused), not after it."""
    from refinex_spark.runtime import ConcurrentRunError

    with RefineServer() as server:
        first, late = (ingested("refine", *_served(server)) for _ in range(2))
        for ctx in (first, late):
            ctx.read("refined_docs")  # both start from the same (empty) table
        refine.run(first)
        sent = server.requests
        with pytest.raises(ConcurrentRunError, match="nothing more of this run was done, run it again"):
            refine.run(late)
        assert server.requests == sent
    assert len(_table(ingested("x"))) == len(DOCS)


def test_aborted_run_then_rerun_equals_uninterrupted(make_ctx, tmp_path):
    """The model server dies after the first slice is committed; the rerun finishes the rest."""
    raw, _ = write_docs(tmp_path / "in", DOCS)
    sliced = "refine.docs_per_commit=4"  # 12 docs: three slices, three commits
    with RefineServer() as server:
        lake_a = "lake.path=" + str(tmp_path / "lake_a")
        ingest.run(make_ctx("ingest", lake_a), [str(raw)])
        refine.run(make_ctx("refine", lake_a, *_served(server)))
        expected = _table(make_ctx("x", lake_a))

        lake_b = "lake.path=" + str(tmp_path / "lake_b")
        ingest.run(make_ctx("ingest", lake_b), [str(raw)])
        first_commit = tmp_path / "lake_b" / "refined_docs" / "_delta_log" / f"{0:020d}.json"
        server.down_when = first_commit.exists
        with pytest.raises(Exception, match="http_500|model server crashed"):
            refine.run(make_ctx("refine", lake_b, sliced, *_served(server, "model.request_timeout_s=5")))
        partial = _table(make_ctx("x", lake_b))
        assert 0 < len(partial) < len(DOCS)  # the first slice survived the crash
        server.down_when = lambda: False
        rerun = refine.run(make_ctx("refine", lake_b, sliced, *_served(server)))
        assert rerun["counts"]["docs"] == len(DOCS) - len(partial) == rerun["counts"]["rows_written.refined_docs"]
        # Statuses are read back once, at the end, over every slice this run committed.
        assert sum(n for k, n in rerun["counts"].items() if k.startswith("status.")) == rerun["counts"]["docs"]
        got = _table(make_ctx("x", lake_b))
    assert got[COMPARED].equals(expected[COMPARED])


def test_refine_with_a_local_transformers_model(ingested, tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny", [d.raw for d in DOCS] + ["remove_lines(start=0, end=1)"])
    ctx = ingested("refine", f"model.path={model_dir}", "model.max_new_tokens=12", "chunking.token_budget=300")
    result = refine.run(ctx)
    assert result["counts"]["docs"] == len(DOCS)
    df = _table(ctx)
    _check_rows(df, {d.doc_id: d.raw for d in DOCS})
    assert set(df["model_id"]) == {str(model_dir)}
    again = lambda: ingested("refine", f"model.path={model_dir}", "model.max_new_tokens=12",  # noqa: E731
                             "chunking.token_budget=300")
    assert refine.run(again())["counts"]["docs"] == 0
    build_tiny_model(model_dir, [d.raw for d in DOCS], seed=1)  # retrained in place: a new revision
    assert refine.run(again())["counts"]["docs"] == len(DOCS)


def test_progress_line_shows_dropped_documents_when_there_are_some():
    counts = {"docs": 10, "ok": 6, "kept": 1, "fallback": 1, "error": 0, "input_chars": 2_000_000}
    assert refine.format_progress(counts, 20, 4.0) == (
        "refine: 4s docs 10/20 (ok 6, kept 1, fallback 1, error 0) 0.50 MB/s")
    assert refine.format_progress({**counts, "dropped": 2}, 20, 4.0) == (
        "refine: 4s docs 10/20 (ok 6, kept 1, fallback 1, error 0, dropped 2) 0.50 MB/s")


def test_a_missing_model_directory_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    """`models/refine` reads like a hub id (org/name); next to ./models holding models it is a path
    that does not exist."""
    monkeypatch.chdir(tmp_path)
    config = load_config(overrides=["model.path=models/refine"])
    refine.check_model(config)  # nothing named models here: a hub id, loaded by the executors
    (tmp_path / "models" / "notes").mkdir(parents=True)
    refine.check_model(config)  # a folder of that name, but no model in it: still taken for a hub id
    (tmp_path / "models" / "refine-v1").mkdir()
    (tmp_path / "models" / "refine-v1" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"'models/refine' is no directory, and ./models/ here holds models"):
        refine.check_model(config)


def test_a_model_is_prompted_as_it_was_trained(tmp_path):
    """The model card names the prompt version and template the model was trained on: refine refuses
    another (its programs would answer a prompt the model never saw); a model without our card passes."""
    from refinex_spark.model.prompt import PROMPT_VERSION, load_template, template_digest
    from refinex_spark.model.train import write_model_card

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    config = load_config(overrides=[f"model.path={model_dir}"])
    refine.check_model(config)  # no card: a model trained elsewhere
    (model_dir / "README.md").write_text("# a model\n\nno front matter here\n")
    refine.check_model(config)

    def card(digest: str) -> None:
        metrics = {"n_train": 1, "n_eval": 0}
        write_model_card(model_dir, {"base_model": "b", "refinex": {
            "prompt_version": PROMPT_VERSION, "template_digest": digest, "data_version": 0, "metrics": metrics}})

    card(template_digest(load_template(PROMPT_VERSION)))
    refine.check_model(config)
    card("0123456789abcdef")  # the template file was edited since training
    with pytest.raises(ValueError, match=rf"trained on prompt {PROMPT_VERSION} \(template 0123456789abcdef\)"):
        refine.check_model(config)
