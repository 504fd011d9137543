"""refine_batch without Spark: per-document error rows, surrogate-safe rows, deletion-only output."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from refinex_spark.config import Config
from refinex_spark.refine import BatchStats, PromptRefused, refine_batch

CONFIG = Config()
DOCS = [("a", "Home | News\nReal text one.", "ha"), ("b", "Share this\nReal text two.", "hb"),
        ("c", "REFUSE me\nReal text three.", "hc")]


class RuleBackend:
    """A deterministic stand-in for a served model: removes line 0, fails prompts holding `marker`
    (by default as a server error would; `refusal=PromptRefused` as a refused prompt; the marker
    "" is in every prompt) or longer than `max_chars` (a context too short for them), and fails
    every call whose number (from 1) `down` is true for."""

    def __init__(self, reply: str = "remove_lines(start=0, end=0)", refusal: type[Exception] = RuntimeError,
                 marker: str = "REFUSE", down: Callable[[int], bool] = lambda call: False,
                 max_chars: int = 10**9) -> None:
        self.reply, self.refusal, self.marker, self.down, self.calls = reply, refusal, marker, down, 0
        self.max_chars = max_chars

    def format_prompt(self, template: str, chunk_text: str) -> str:
        return chunk_text

    def generate(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        if self.down(self.calls):
            raise RuntimeError("HTTP 503: model server crashed")
        if any(self.marker in p for p in prompts):
            raise self.refusal("HTTP 400: content filter")
        if any(len(p) > self.max_chars for p in prompts):
            raise self.refusal("HTTP 400: prompt and max_tokens exceed the context")
        return [self.reply for _ in prompts]


def test_one_refused_document_is_an_error_row_and_the_others_are_refined():
    stats = BatchStats()
    rows = refine_batch(DOCS, RuleBackend(), "", CONFIG, stats)
    assert [r["doc_id"] for r in rows] == ["a", "b", "c"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert rows[0]["refined_text"] == "Real text one." and rows[2]["refined_text"] is None
    assert "content filter" in rows[2]["error"] and stats.statuses == {"ok": 2, "error": 1}


@pytest.mark.parametrize("docs", [[DOCS[2]], [DOCS[2], ("d", "REFUSE too", "hd")]], ids=["alone", "all"])
@pytest.mark.parametrize("refusal", [PromptRefused, RuntimeError])
def test_documents_a_working_backend_fails_on_are_error_rows_even_when_no_other_succeeds(docs, refusal):
    """The backend answers an empty document's prompt, so these failures are the documents' own:
    failing the task instead would fail every rerun at the same documents."""
    backend = RuleBackend(refusal=refusal)
    rows = refine_batch(docs, backend, "", CONFIG)
    assert [r["status"] for r in rows] == ["error"] * len(docs)
    assert all(f"{refusal.__name__}: HTTP 400: content filter" in r["error"] for r in rows)
    # The batch and the probe; each document when several (or it failed other than by a refusal);
    # then, for those, the probe again and a last try.
    per_doc = len(docs) if len(docs) > 1 or refusal is RuntimeError else 0
    assert backend.calls == 2 + per_doc + (1 + len(docs) if refusal is RuntimeError else 0)


MANY = [(f"d{i}", f"Real text {i}.\nMore of it.", f"h{i}") for i in range(CONFIG.refine.failing_batch_docs)]


def test_a_setting_that_refuses_every_real_prompt_fails_the_batch():
    """The server answers an empty document's short prompt, but none of a batch's real ones, nor one
    as long of no readable text (a context too short for a chunk plus max_new_tokens): error rows
    would stay, so the task fails instead."""
    backend = RuleBackend(refusal=PromptRefused, max_chars=20)
    with pytest.raises(RuntimeError, match=f"failed all {len(MANY)} documents of the batch"):
        refine_batch(MANY, backend, "", CONFIG)
    assert backend.calls == 3 + len(MANY)  # the batch, the probe, each document once, a prompt as long
    rows = refine_batch(MANY[:-1], RuleBackend(refusal=PromptRefused, max_chars=20), "", CONFIG)
    assert [r["status"] for r in rows] == ["error"] * (len(MANY) - 1)  # fewer: the documents' own refusals


def test_a_batch_of_documents_refused_for_what_they_say_is_error_rows_run_after_run():
    """Every document of a batch refused by a content filter, however many: the backend answers a
    prompt as long of unreadable text, so these are the documents' error rows. Failing the task
    instead failed every rerun, and `--retry-errors` of such documents always."""
    refused = [(doc_id, "REFUSE " + text, h) for doc_id, text, h in MANY]
    for _ in range(2):
        backend = RuleBackend(refusal=PromptRefused)
        rows = refine_batch(refused, backend, "", CONFIG)
        assert [r["status"] for r in rows] == ["error"] * len(MANY) and "content filter" in rows[0]["error"]
        assert backend.calls == 3 + len(MANY)


@pytest.mark.parametrize("backend", [
    RuleBackend(down=lambda call: True),  # down
    RuleBackend(refusal=PromptRefused, marker=""),  # refuses every request (a setting of the run)
    RuleBackend(down=lambda call: call == 1 or call >= 3),  # one document answered, then down
], ids=["down", "refuses_everything", "down_after_one_document"])
def test_a_backend_that_does_not_work_fails_the_batch(backend):
    with pytest.raises(RuntimeError, match="and then an empty document's prompt"):
        refine_batch(DOCS, backend, "", CONFIG)


def test_a_brief_outage_costs_no_document():
    """Down for the batch and the first document's own call, back for the rest: every document
    is refined, none becomes an error row that no rerun would retry."""
    backend = RuleBackend(down=lambda call: call in (1, 3))
    rows = refine_batch(DOCS[:2], backend, "", CONFIG)
    assert [r["status"] for r in rows] == ["ok", "ok"] and backend.calls == 6


def test_an_outage_fails_the_batch_before_any_document_is_tried_alone():
    backend = RuleBackend(down=lambda call: True)
    with pytest.raises(RuntimeError, match="and then an empty document's prompt"):
        refine_batch(DOCS * 50, backend, "", CONFIG)
    assert backend.calls == 2  # the batch and the probe, not 150 documents' own retries


def test_an_answer_cut_while_reasoning_applies_none_of_its_drafts():
    """Cut at max_new_tokens inside <think>: no program, whatever its drafts look like, so the chunk
    keeps its text (a draft op used to apply beside one rejected prose line)."""
    cut = "<think>Lines 0-1 are a menu.\nremove_lines(start=0, end=1)"
    doc = ("r", "Home | News\nMenu\nThe story.\nMore of it.", "hr")
    (row,) = refine_batch([doc], RuleBackend(cut), "", CONFIG)
    assert (row["status"], row["refined_text"], row["program"]) == ("fallback", doc[1], "<think>")
    assert [o["reason"] for o in json.loads(row["op_outcomes"])] == ["malformed"]
    (closed,) = refine_batch([doc], RuleBackend("<think>a menu</think>\nremove_lines(start=0, end=1)"), "", CONFIG)
    assert (closed["status"], closed["refined_text"]) == ("ok", "The story.\nMore of it.")


def test_lone_surrogates_in_model_output_are_rejected_and_stored_visibly():
    doc = ("q", "Why? Because. Really?\nsecond line", "hq")
    rows = refine_batch([doc], RuleBackend('remove_str(line=0, text="\ud800")'), "", CONFIG)
    row = rows[0]
    # The op is judged as the model wrote it (a lone surrogate is no text of the line), not as a
    # storable stand-in: '?' would be in the line and every '?' deleted.
    assert (row["status"], row["refined_text"]) == ("fallback", doc[1])
    outcomes = json.loads(row["op_outcomes"])
    assert (outcomes[0]["reason"], outcomes[0]["chunk"]) == ("malformed", 0)
    # Read back, the op is still storable text (what the report and notebooks render), not a surrogate.
    assert outcomes[0]["op"].encode("utf-8") == b'remove_str(line=0, text="\\ud800")'
    assert row["program"].encode("utf-8") == b'remove_str(line=0, text="\\ud800")'


@pytest.mark.parametrize("reply, status", [
    ("<think>\n\n</think>\n\nremove_lines(start=0, end=0)", "ok"),  # Qwen3's template on export-sft rows
    ("<think>Line 0 is a menu.</think>remove_lines(start=0, end=0)", "ok"),  # a reasoning model
    ("<think>Line 0 is a menu, so", "fallback"),  # cut before the program: its lines are rejected
])
def test_a_leading_reasoning_block_is_not_part_of_the_program(reply, status):
    [row] = refine_batch([DOCS[0]], RuleBackend(reply), "", CONFIG)
    assert row["status"] == status
    if status == "ok":
        assert row["refined_text"] == "Real text one." and row["program"] == "remove_lines(start=0, end=0)"
