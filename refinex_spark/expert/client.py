"""OpenAI-compatible HTTP client: one prompt in, the model's answer out. Pure Python.

The one HTTP client of the project: the expert sends a user turn to the chat endpoint, the
`openai` refine backend sends either a user turn or a plain prompt (the completions endpoint).

Attempts that a retry can fix are retried with exponential backoff and jitter: HTTP 408, 409, 429 and
5xx, timeouts, connection errors, and replies that are not a usable completion (malformed JSON,
no choices, no answer text), which overloaded servers and proxies do send. A `Retry-After`
header sets the least wait before the next attempt; one longer than `backoff_max_s` ends the
document's attempts instead (a task slot must not sleep for an hour; the next run retries it).
Other HTTP errors (400 for an over-long prompt, 401, 404) are permanent, and so is an answer cut
off at `max_tokens` (finish_reason "length"): with greedy decoding it would be cut again. A client
made with `truncated_ok` takes such an answer instead (a refine program cut short still has
valid ops; the program parser rejects the cut last line, and the unclosed <think> block of a
reasoning model cut before it answered). An answer the provider's content filter
stopped is permanent too, whatever the client: its missing tail would read as text deleted. Redirects
are failures (http_3xx), never followed: the API key would go wherever they point.

Every attempt first takes one request from the `RequestBudget`, so a budget bounds what a run
sends, retries included. Failures never raise: `complete` returns a `Completion` whose `error`
reads "<kind>: <detail>", kind being one of `ERROR_KINDS` or `http_<status>`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

Endpoint = Literal["chat", "completions"]
N = TypeVar("N", int, float)
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx
ERROR_KINDS = ("timeout", "connection", "bad_reply", "truncated", "content_filter", "rate_limited", "budget_exhausted",
               "internal")
MAX_ERROR_CHARS = 500
# Failures of the request itself: the same prompt gets them again, however healthy the server is.
PROMPT_ERROR_KINDS = frozenset({"http_400", "http_413", "http_422", "truncated", "content_filter"})


class ExpertFailure(Exception):
    """One failed attempt (or, with kind internal/budget_exhausted, a failed document)."""

    def __init__(self, kind: str, detail: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Wait before retry number `retry` (0-based): "equal jitter", uniform in [d/2, d] with
        d = min(backoff_max_s, backoff_base_s * 2**retry), so parallel clients that failed
        together do not come back together, yet each still waits at least half the step."""
        step = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** min(retry, 60))
        return step / 2 + rng.random() * step / 2


class RequestBudget:
    """At most `limit` requests (None: unlimited), shared by the threads of one task."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one text (a piece, or a whole document once its pieces are joined)."""

    text: str | None
    error: str | None = None
    latency_s: float | None = None  # seconds of the attempt that decided the outcome
    tokens: int | None = None  # completion tokens, when the server reports them
    prompt_tokens: int | None = None  # prompt tokens, when the server reports them
    requests: int = 0  # attempts sent
    retries: int = 0  # attempts that were retries
    failures: int = 0  # attempts that failed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def prompt_refused(self) -> bool:
        """Failed for a reason that belongs to this prompt, not to the server's state."""
        return self.error is not None and self.error.split(":", 1)[0] in PROMPT_ERROR_KINDS

    @staticmethod
    def failed(error: str, **counts: Any) -> Completion:
        return Completion(None, error[:MAX_ERROR_CHARS], **counts)


def join_pieces(parts: Sequence[Completion]) -> Completion:
    """A document's outcome from its pieces' outcomes, in order: texts joined by "\\n" (the pieces
    are line-aligned), latencies and tokens summed; the first failure fails the document."""
    error = next((p.error for p in parts if not p.ok), None)
    return Completion(
        text=None if error else "\n".join(p.text or "" for p in parts),
        error=error,
        latency_s=_sum_reported(p.latency_s for p in parts),
        tokens=_sum_reported(p.tokens for p in parts),
        prompt_tokens=_sum_reported(p.prompt_tokens for p in parts),
        requests=sum(p.requests for p in parts),
        retries=sum(p.retries for p in parts),
        failures=sum(p.failures for p in parts),
    )


def _sum_reported(values: Iterable[N | None]) -> N | None:
    """The sum of the values that are not None; None when none is (nothing was reported)."""
    reported = [v for v in values if v is not None]
    return sum(reported) if reported else None


def clean_pieces(pieces: Sequence[str], complete: Callable[[str], Completion]) -> Completion:
    """A document's outcome from its line-aligned pieces, cleaned in order by `complete`.

    Blank pieces are kept as they are without a request. The first failed piece fails the
    document and the rest are not sent: the whole document is retried by the next run anyway.
    """
    parts: list[Completion] = []
    for piece in pieces:
        part = complete(piece) if piece.strip() else Completion(piece)
        parts.append(part)
        if not part.ok:
            break
    return join_pieces(parts)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT by definition
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None


def parse_reply(body: bytes, endpoint: Endpoint = "chat", *, truncated_ok: bool = False) -> Completion:
    """The answer text and reported token counts of a chat-completions or completions response body
    (a `Completion` whose attempt counts the caller fills in).

    Raises a retryable ExpertFailure(bad_reply) for anything that is not a usable completion and,
    unless `truncated_ok`, a permanent ExpertFailure(truncated) for an answer that hit max_tokens.
    """
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ExpertFailure("bad_reply", f"malformed JSON ({e})", retryable=True) from None
    if not isinstance(reply, dict):
        raise ExpertFailure("bad_reply", f"expected a JSON object, got {type(reply).__name__}", retryable=True)
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        error = reply.get("error")  # some servers answer 200 with an error object
        detail = f"error in reply: {error.get('message', error) if isinstance(error, dict) else error}" if error \
            else "no choices"
        raise ExpertFailure("bad_reply", " ".join(str(detail).split())[:300], retryable=True)
    choice = choices[0] if isinstance(choices[0], dict) else {}
    # Before the content: a reasoning model out of tokens has none, and a retry would be cut again.
    finish = choice.get("finish_reason")
    if finish == "length" and not truncated_ok:
        raise ExpertFailure("truncated", "the answer hit max_tokens (finish_reason=length)", retryable=False)
    if finish == "content_filter":  # the provider cut the answer: its missing tail would read as deleted
        raise ExpertFailure("content_filter", "the provider's content filter stopped the answer", retryable=False)
    if endpoint == "chat":
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: the text ones, in order
            parts = [p for p in content if isinstance(p, dict)]
            texts = [p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str)]
            if not texts and any(p.get("type") == "refusal" for p in parts):
                raise ExpertFailure("content_filter", "the model refused the prompt", retryable=False)
            content = "".join(texts) if texts else None
    else:
        content = choice.get("text")
    if not content and finish == "length":  # a client taking cut answers: cut while reasoning
        # As a local backend would give it: an unclosed <think> block, whose lines a program parser
        # rejects (as "" it read as an empty program, a chunk the model judged clean).
        message = choice.get("message")
        reasoning = message.get("reasoning_content") if isinstance(message, dict) else None
        content = "<think>" + (reasoning if isinstance(reasoning, str) else "")
    if not isinstance(content, str):
        raise ExpertFailure("bad_reply", "no message content" if endpoint == "chat" else "no text", retryable=True)
    try:  # JSON can carry lone surrogates ("\ud800"), which no UTF-8 table can store
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise ExpertFailure("bad_reply", "answer is not valid Unicode (lone surrogate)", retryable=False) from None
    usage = reply.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(content, tokens=_count(usage.get("completion_tokens")),
                      prompt_tokens=_count(usage.get("prompt_tokens")))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an http_3xx failure: followed, it would send the API key to wherever it points
    (and turn the POST into a GET)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snippet(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(300).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""


class ChatClient:
    """POSTs to `<base_url>/chat/completions` (the prompt as the user turn) or, with endpoint
    "completions", to `<base_url>/completions` (the prompt as is); thread-safe (one urllib
    request per attempt).

    `rng` (jitter) and `sleep` are parameters so that tests can pin the jitter and observe waits.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        temperature: float = 0.0,
        endpoint: Endpoint = "chat",
        truncated_ok: bool = False,
        budget: RequestBudget | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.endpoint = endpoint
        self.truncated_ok = truncated_ok
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry
        self.temperature = temperature
        self.budget = budget or RequestBudget(None)
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._sleep = sleep
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def complete(self, content: str, max_tokens: int) -> Completion:
        """Send `content` (the user turn, or the prompt); retry what can be retried; never raises."""
        chat = self.endpoint == "chat"
        prompt = {"messages": [{"role": "user", "content": content}]} if chat else {"prompt": content}
        body = json.dumps({"model": self.model, **prompt, "temperature": self.temperature,
                           "max_tokens": max_tokens, "stream": False}).encode()
        requests = retries = failures = 0
        latency: float | None = None
        for attempt in range(self.retry.max_retries + 1):
            if not self.budget.take():
                last = f"; the last attempt: {failure}" if failures else ""  # what the retries were for
                failure = ExpertFailure("budget_exhausted", f"request budget of {self.budget.limit} for this "
                                        f"task used up (expert.max_requests){last}", retryable=False)
                break
            requests += 1
            started = time.perf_counter()
            try:
                reply = self._attempt(body)
                return replace(reply, latency_s=time.perf_counter() - started, requests=requests,
                               retries=retries, failures=failures)
            except ExpertFailure as e:
                failure = e
            latency = time.perf_counter() - started
            failures += 1
            if not failure.retryable or attempt == self.retry.max_retries:
                break
            with self._rng_lock:
                wait = self.retry.backoff(attempt, self._rng)
            if failure.retry_after is not None:
                if failure.retry_after > self.retry.backoff_max_s:
                    failure = ExpertFailure("rate_limited", f"Retry-After {failure.retry_after:g}s is over "
                                            f"backoff_max_s={self.retry.backoff_max_s:g}s ({failure})", retryable=False)
                    break
                wait = max(wait, failure.retry_after)
            self._sleep(wait)
            retries += 1
        return Completion.failed(f"{failure} (after {requests} requests)", latency_s=latency,
                                 requests=requests, retries=retries, failures=failures)

    def served_models(self, timeout_s: float) -> list[str]:
        """The model ids the server lists (GET <base_url>/models, one attempt, no budget); [] for a listing
        it does not understand. Raises ExpertFailure as a completion request would."""
        request = urllib.request.Request(self.base_url + "/models", headers=self._headers, method="GET")
        try:
            listed = json.loads(self._fetch(request, timeout_s))["data"]
            return [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, KeyError, TypeError):
            return []

    def _attempt(self, body: bytes) -> Completion:
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        return parse_reply(self._fetch(request, self.timeout_s), self.endpoint, truncated_ok=self.truncated_ok)

    def _fetch(self, request: urllib.request.Request, timeout_s: float) -> bytes:
        # The socket timeout bounds each read; the deadline bounds the answer, which a server (or a
        # proxy) trickling bytes would otherwise stretch without end.
        deadline = time.monotonic() + timeout_s
        try:
            with _OPENER.open(request, timeout=timeout_s) as response:
                body = bytearray()
                while chunk := response.read1(1 << 16):
                    body += chunk
                    if time.monotonic() > deadline:
                        raise TimeoutError
                if response.length:  # the connection ended before the announced Content-Length
                    raise http.client.IncompleteRead(bytes(body), response.length)
                return bytes(body)
        except urllib.error.HTTPError as e:
            retryable = e.code in RETRYABLE_STATUS or e.code >= 500
            raise ExpertFailure(f"http_{e.code}", _snippet(e) or str(e.reason), retryable=retryable,
                                retry_after=parse_retry_after(e.headers.get("Retry-After"))) from None
        except TimeoutError:
            raise ExpertFailure("timeout", f"no answer within {timeout_s:g}s", retryable=True) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ExpertFailure("timeout", f"no connection within {timeout_s:g}s", retryable=True) from None
            raise ExpertFailure("connection", str(e.reason), retryable=True) from None
        except (OSError, http.client.HTTPException) as e:  # reset, refused, incomplete read
            raise ExpertFailure("connection", f"{type(e).__name__}: {e}", retryable=True) from None
