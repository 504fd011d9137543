"""The HTTP client against a real loopback server: answers (chat and completions endpoints),
retries, backoff, Retry-After, budgets and unusable or cut-off replies; plus its pure helpers
(reply parsing, joining pieces)."""

from __future__ import annotations

import email.utils
import json
import random
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expert_server import FakeExpert
from refinex_spark.chunking import chunk_document
from refinex_spark.expert.client import (
    ChatClient,
    Completion,
    ExpertFailure,
    RequestBudget,
    RetryPolicy,
    clean_pieces,
    join_pieces,
    parse_reply,
    parse_retry_after,
)
from refinex_spark.model.prompt import user_message

INSTRUCTION = "Delete the noise of the document below; copy everything else."
KEY = "test-key-123"
FAST = RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=2.0)


@pytest.fixture
def server():
    with FakeExpert(INSTRUCTION, api_key=KEY, slow_s=0.8) as s:
        yield s


def client_for(server: FakeExpert, **options) -> ChatClient:
    # A loopback answer takes milliseconds, but a busy CI machine can stall a process for longer
    # than a tight timeout: only the test of timeouts itself sets one (below the slow mode's sleep).
    options = {"api_key": KEY, "timeout_s": 5.0, "retry": FAST, **options}
    return ChatClient(server.base_url, server.model, **options)


def ask(client: ChatClient, piece: str) -> Completion:
    return client.complete(user_message(INSTRUCTION, piece), max_tokens=64)


def test_clean_answer(server):
    done = ask(client_for(server), "Title\nNOISE share this\nBody text")
    assert done.ok and done.error is None
    assert done.text == "Title\nBody text"
    assert done.tokens == 3  # the server reports completion_tokens = words of the answer
    assert done.prompt_tokens == 6  # and prompt_tokens = words of the piece
    assert (done.requests, done.retries, done.failures) == (1, 0, 0)
    assert done.latency_s is not None and done.latency_s > 0
    assert server.max_tokens == [64] and server.rejected == []
    assert server.paths == {"/v1/chat/completions": 1}


def test_completions_endpoint_sends_a_prompt_and_reads_text(server):
    """The `prompt` field (the server rejects a body without it) to /completions; the answer is
    the choice's `text`."""
    done = ask(client_for(server, endpoint="completions"), "Title\nNOISE share this\nBody text")
    assert done.ok and done.text == "Title\nBody text"
    assert (done.tokens, done.prompt_tokens, done.requests) == (3, 6, 1)
    assert server.paths == {"/v1/completions": 1} and server.rejected == []


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_truncated_ok_takes_an_answer_cut_at_max_tokens(server, endpoint):
    piece = "[[expert:truncated]]\nkeep me"
    done = ask(client_for(server, endpoint=endpoint, truncated_ok=True), piece)
    assert done.ok and done.text == "keep me" and done.requests == 1
    failed = ask(client_for(server, endpoint=endpoint), piece)  # the default: a permanent failure
    assert failed.error.startswith("truncated: ") and failed.requests == 1


@pytest.mark.parametrize("mode, kind, requests", [
    ("error500", "http_500", 3),
    ("outage", "http_503", 3),
    ("malformed", "bad_reply", 3),
    ("empty_choices", "bad_reply", 3),
    ("no_content", "bad_reply", 3),
    ("slow", "timeout", 3),
    ("trickle", "timeout", 3),        # every read quick, the whole answer not: the deadline is the answer's
    ("truncated", "truncated", 1),    # greedy decoding would cut it again
    ("reasoning_cut", "truncated", 1),  # no content because thinking used every token: cut again too
    ("content_filter", "content_filter", 1),  # kept, its missing tail would read as deleted text
    ("error_body", "bad_reply", 3),
    ("redirect", "http_302", 1),      # not followed: the key would go wherever it points
    ("cut_body", "connection", 3),    # a body shorter than announced is the network's failure, not the server's
    ("bad_request", "http_400", 1),   # client errors are not retried
])
def test_failures_are_bounded_and_explained(server, mode, kind, requests):
    piece = f"[[expert:{mode}]]\nsome text"
    done = ask(client_for(server, timeout_s=0.3), piece)
    assert not done.ok and done.text is None
    assert done.error.startswith(f"{kind}: ") and done.error.endswith(f"(after {requests} requests)")
    assert server.requests[piece] == done.requests == done.failures == requests
    assert done.retries == requests - 1


def test_unusable_replies_name_the_reason(server):
    client = client_for(server, retry=RetryPolicy(max_retries=0))
    reasons = {mode: ask(client, f"[[expert:{mode}]]").error for mode in ("malformed", "empty_choices", "no_content")}
    assert "malformed JSON" in reasons["malformed"]
    assert "no choices" in reasons["empty_choices"]
    assert "no message content" in reasons["no_content"]
    assert ask(client, "[[expert:error_body]]").error.startswith("bad_reply: error in reply: model overloaded")
    completions = client_for(server, retry=RetryPolicy(max_retries=0), endpoint="completions")
    assert ask(completions, "[[expert:no_content]]").error.startswith("bad_reply: no text")


def test_a_redirect_is_not_followed(server):
    done = ask(client_for(server), "[[expert:redirect]]\nkeep me")
    assert done.error.startswith("http_302") and dict(server.paths) == {"/v1/chat/completions": 1}


def test_content_parts_are_joined():
    def reply(content, finish="stop"):  # type: ignore[no-untyped-def]
        return json.dumps({"choices": [{"message": {"content": content}, "finish_reason": finish}]}).encode()

    parts = [{"type": "text", "text": "Title\n"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "Body"}]
    assert parse_reply(reply(parts)).text == "Title\nBody"
    with pytest.raises(ExpertFailure) as refused:  # a refusal part, no text: permanent, like a filter
        parse_reply(reply([{"type": "refusal", "refusal": "I can't help with that."}]))
    assert refused.value.kind == "content_filter" and not refused.value.retryable
    with pytest.raises(ExpertFailure, match="no message content"):  # nothing usable: retried
        parse_reply(reply([]))


def test_a_client_taking_cut_answers_takes_one_cut_before_any_content():
    """A reasoning model that spent max_tokens thinking: for refine (truncated_ok) its unclosed
    reasoning, as a local backend gives it, not a malformed reply retried at full length; refine
    rejects its lines, so the chunk is a fallback (it was read as an empty program: kept)."""
    from refinex_spark.config import Config
    from refinex_spark.refine import _assemble

    body = json.dumps({"choices": [{"message": {"content": None, "reasoning_content": "Let me"},
                                    "finish_reason": "length"}]}).encode()
    cut = parse_reply(body, truncated_ok=True).text
    assert cut == "<think>Let me"
    empty = json.dumps({"choices": [{"message": {"content": ""}, "finish_reason": "length"}]}).encode()
    assert parse_reply(empty, truncated_ok=True).text == "<think>"  # nothing written before the cut
    chunk = chunk_document("Menu\nThe story.", Config().chunking)[0]
    row = _assemble("d", "Menu\nThe story.", "h", [chunk], [cut], Config())
    assert (row["status"], row["refined_text"], json.loads(row["op_outcomes"])[0]["reason"]) == (
        "fallback", "Menu\nThe story.", "malformed")


def test_transient_failure_is_retried(server):
    piece = "[[expert:flaky]]\nkeep me"
    done = ask(client_for(server), piece)
    assert done.ok and done.text == "keep me"
    assert (done.requests, done.retries, done.failures) == (2, 1, 1)


def test_retry_after_is_honoured(server):
    piece = "[[expert:rate_limit]]\nkeep me"
    done = ask(client_for(server), piece)
    assert done.ok and done.requests == 2
    first, second = server.times[piece]
    assert second - first >= server.retry_after_s


def test_retry_after_longer_than_the_cap_ends_the_attempts(server):
    piece = "[[expert:rate_limit]]\nkeep me"
    done = ask(client_for(server, retry=RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.5)), piece)
    assert done.error.startswith("rate_limited: Retry-After 1s")
    assert server.requests[piece] == 1


def test_backoff_waits_grow_with_jitter(server):
    waits: list[float] = []
    policy = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.03)
    done = ask(client_for(server, retry=policy, sleep=waits.append, rng=random.Random(7)), "[[expert:error500]]")
    assert done.requests == 4 and len(waits) == 3
    for retry, wait in enumerate(waits):
        step = min(0.03, 0.01 * 2**retry)
        assert step / 2 <= wait <= step


def test_budget_bounds_requests_across_documents(server):
    client = client_for(server, budget=RequestBudget(4))
    first = ask(client, "[[expert:error500]]\na")   # 3 requests
    second = ask(client, "[[expert:error500]]\nb")  # 1 request, then the budget is gone
    third = ask(client, "plain")
    assert (first.requests, second.requests, third.requests) == (3, 1, 0)
    assert second.error.startswith("budget_exhausted") and third.error.startswith("budget_exhausted")
    assert "; the last attempt: http_500" in second.error  # what the retries were for is not lost
    assert "last attempt" not in third.error  # it never sent one
    assert server.total_requests == 4


def test_connection_errors_are_retried():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "m", timeout_s=0.3, retry=FAST)
    done = client.complete("hello", max_tokens=8)
    assert done.error.startswith("connection: ") and done.requests == 3


def test_missing_key_is_a_permanent_error(server):
    done = ask(client_for(server, api_key=None), "text")
    assert done.error.startswith("http_401: ") and done.requests == 1
    assert server.rejected == ["bad or missing bearer key"]


def test_parse_retry_after():
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, "", "-1", "nan", "inf", "soon", "Mon, 99 Foo 2020"):
        assert parse_retry_after(bad) is None


def test_parse_reply_reads_text_and_tokens():
    body = {"choices": [{"message": {"content": "clean"}, "finish_reason": "stop"}],
            "usage": {"completion_tokens": 4, "prompt_tokens": 9}}
    assert parse_reply(json.dumps(body).encode()) == Completion("clean", tokens=4, prompt_tokens=9)
    body["usage"] = {"completion_tokens": True}
    assert parse_reply(json.dumps(body).encode()) == Completion("clean")
    plain = {"choices": [{"text": "clean", "finish_reason": "length"}], "usage": {"completion_tokens": 4}}
    assert parse_reply(json.dumps(plain).encode(), "completions", truncated_ok=True) == Completion("clean", tokens=4)
    with pytest.raises(ExpertFailure, match="no message content"):  # read as a chat reply, it has no message
        parse_reply(json.dumps({**plain, "choices": [{"text": "clean", "finish_reason": "stop"}]}).encode())
    with pytest.raises(ExpertFailure, match="truncated"):  # cut, whatever is missing: the cut comes first
        parse_reply(json.dumps(plain).encode())


@pytest.mark.parametrize("endpoint, choice", [("chat", {"message": {"content": "\ud800"}}),
                                              ("completions", {"text": "\ud800"})])
def test_parse_reply_lone_surrogate_is_permanent(endpoint, choice):
    with pytest.raises(ExpertFailure) as failure:
        parse_reply(json.dumps({"choices": [choice]}).encode(), endpoint, truncated_ok=True)
    assert failure.value.kind == "bad_reply" and not failure.value.retryable


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["choices", "message", "content", "text", "usage", "finish_reason", "x"]),
                         inner, max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)),
       st.sampled_from(["chat", "completions"]), st.booleans())
def test_parse_reply_never_fails_otherwise(body, endpoint, truncated_ok):
    """Any body is a reply with a text or an ExpertFailure with a reason, never another error."""
    try:
        reply = parse_reply(body, endpoint, truncated_ok=truncated_ok)
    except ExpertFailure as e:
        assert e.kind in (("bad_reply",) if truncated_ok else ("bad_reply", "truncated"))
    else:
        assert isinstance(reply.text, str)
        assert all(n is None or isinstance(n, int) for n in (reply.tokens, reply.prompt_tokens))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.floats(0, 10), st.floats(0, 100), st.integers(0, 2**32))
def test_backoff_is_bounded(retry, base, cap, seed):
    policy = RetryPolicy(backoff_base_s=base, backoff_max_s=cap)
    step = min(cap, base * 2.0**min(retry, 60))
    assert step / 2 <= policy.backoff(retry, random.Random(seed)) <= step


def test_clean_pieces_skips_blank_pieces_and_stops_at_the_first_failure():
    sent: list[str] = []

    def complete(piece: str) -> Completion:
        sent.append(piece)
        if piece == "bad":
            return Completion.failed("http_500: no", requests=3, failures=3, retries=2)
        return Completion(piece.upper(), latency_s=0.5, tokens=2, prompt_tokens=3, requests=1)

    done = clean_pieces(["one", "  ", "two"], complete)
    assert done.text == "ONE\n  \nTWO" and sent == ["one", "two"]
    assert (done.tokens, done.prompt_tokens, done.latency_s, done.requests) == (4, 6, 1.0, 2)
    sent.clear()
    failed = clean_pieces(["one", "bad", "three"], complete)
    assert sent == ["one", "bad"] and failed.text is None and failed.error == "http_500: no"
    assert (failed.requests, failed.failures, failed.retries) == (4, 3, 2)


def test_join_pieces_without_reported_tokens():
    joined = join_pieces([Completion("a"), Completion("b", latency_s=0.2)])
    assert joined.text == "a\nb" and joined.tokens is None and joined.prompt_tokens is None and joined.latency_s == 0.2
