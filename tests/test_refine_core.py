"""refine_batch without Spark: per-document error rows, surrogate-safe rows, deletion-only output."""

from __future__ import annotations

import pytest

from refinex_spark.config import Config
from refinex_spark.refine import BatchStats, PromptRefused, refine_batch

CONFIG = Config()
DOCS = [("a", "Home | News\nReal text one.", "ha"), ("b", "Share this\nReal text two.", "hb"),
        ("c", "REFUSE me\nReal text three.", "hc")]


class RuleBackend:
    """A deterministic stand-in for a served model: removes line 0, fails prompts with REFUSE
    (by default as a server error would; `refusal=PromptRefused` as a refused prompt)."""

    def __init__(self, reply: str = "remove_lines(start=0, end=0)", refusal: type[Exception] = RuntimeError) -> None:
        self.reply, self.refusal, self.calls = reply, refusal, 0

    def format_prompt(self, template: str, chunk_text: str) -> str:
        return chunk_text

    def generate(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        if any("REFUSE" in p for p in prompts):
            raise self.refusal("HTTP 400: content filter")
        return [self.reply for _ in prompts]


def test_one_refused_document_is_an_error_row_and_the_others_are_refined():
    stats = BatchStats()
    rows = refine_batch(DOCS, RuleBackend(), "", CONFIG, stats)
    assert [r["doc_id"] for r in rows] == ["a", "b", "c"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert rows[0]["refined_text"] == "Real text one." and rows[2]["refined_text"] is None
    assert "content filter" in rows[2]["error"] and stats.statuses == {"ok": 2, "error": 1}


def test_a_backend_down_for_every_document_fails_the_batch():
    with pytest.raises(RuntimeError, match="content filter"):
        refine_batch([DOCS[2], ("d", "REFUSE too", "hd")], RuleBackend(), "", CONFIG)


@pytest.mark.parametrize("docs", [[DOCS[2]], [DOCS[2], ("d", "REFUSE too", "hd")]], ids=["alone", "all"])
def test_documents_the_backend_refuses_are_error_rows_even_when_no_other_succeeds(docs):
    """A refused prompt is the document's own error, even alone in its batch: failing the task
    instead would fail every rerun at the same document."""
    rows = refine_batch(docs, RuleBackend(refusal=PromptRefused), "", CONFIG)
    assert [r["status"] for r in rows] == ["error"] * len(docs)
    assert all("PromptRefused: HTTP 400: content filter" in r["error"] for r in rows)


def test_a_lone_document_the_backend_fails_on_fails_the_batch():
    with pytest.raises(RuntimeError, match="content filter"):
        refine_batch([DOCS[2]], RuleBackend(), "", CONFIG)


def test_lone_surrogates_in_model_output_are_made_storable():
    rows = refine_batch(DOCS[:1], RuleBackend('remove_str(line=0, text="\ud800")'), "", CONFIG)
    rows[0]["program"].encode("utf-8")
    rows[0]["op_outcomes"].encode("utf-8")
    assert rows[0]["status"] == "fallback"  # the op was rejected (text not in line): nothing applied
