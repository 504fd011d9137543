"""A fake expert for tests: an OpenAI-compatible chat-completions server on loopback, which also
serves the plain completions endpoint (the `prompt` in, the answer as the choice's `text`).

It is a real `http.server.ThreadingHTTPServer` in a thread, so the client and the Spark stage are
exercised over real sockets, timeouts and status codes. It checks every request the way a server
would (path, JSON body, model, user turn or prompt starting with the expert instruction, bearer
key) and answers 400/401/404 when one is wrong.

What it answers is deterministic per document piece (the text after the instruction): a marker
line `[[expert:<mode>]]` in the piece picks a mode from `MODES`; a piece without a marker is
cleaned correctly. A correct cleanup is `answers[piece]` when given (the synth doc's `expert`
text), else `default_clean(piece)`: the piece without marker lines and lines holding "NOISE".
Requests are counted per piece, with their arrival times, so tests can check retry bounds and
Retry-After waits.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MARKER = re.compile(r"\[\[expert:([a-z0-9_]+)\]\]")
MODES = {
    "paraphrase": "answers 200 with the lines reworded (an expert that rewrites instead of deleting)",
    "rate_limit": "429 with Retry-After on the first attempt, then a correct cleanup",
    "flaky": "500 on the first attempt, then a correct cleanup",
    "error500": "500 on every attempt",
    "outage": "503 until recover() is called, then a correct cleanup",
    "slow": "sleeps slow_s (past the client's timeout) before every answer",
    "malformed": "200 with a body that is not JSON",
    "empty_choices": "200 with an empty choices list",
    "no_content": "200 with a message that has no content (a choice without text)",
    "truncated": "200 with finish_reason 'length'",
    "reasoning_cut": "200 with no content, only reasoning, and finish_reason 'length' (a thinking model out of tokens)",
    "content_filter": "200 with the answer's start and finish_reason 'content_filter'",
    "error_body": "200 with an error object instead of choices",
    "redirect": "302 to another path of this server (where the API key must not follow)",
    "trickle": "200 with a correct cleanup sent a byte every 20 ms (each read is quick, the answer is not)",
    "cut_body": "200 whose connection closes halfway through the announced Content-Length",
    "bad_request": "400 on every attempt (e.g. a prompt over the context)",
}


def default_clean(piece: str) -> str:
    return "\n".join(line for line in piece.split("\n") if not MARKER.search(line) and "NOISE" not in line)


def paraphrase(piece: str) -> str:
    return "Here is the cleaned text:\n" + "\n".join(" ".join(reversed(line.split())) for line in piece.split("\n"))


class FakeExpert:
    def __init__(self, instruction: str, *, model: str = "fake-expert", answers: Mapping[str, str] | None = None,
                 api_key: str | None = None, retry_after_s: int = 1, slow_s: float = 1.0) -> None:
        self.instruction = instruction
        self.model = model
        self.answers = dict(answers or {})
        self.api_key = api_key
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.requests: Counter[str] = Counter()  # piece -> requests received
        self.paths: Counter[str] = Counter()  # URL path -> valid requests received
        self.times: dict[str, list[float]] = defaultdict(list)  # piece -> arrival times (perf_counter)
        self.max_tokens: list[int] = []
        self.rejected: list[str] = []  # requests answered 400/401 because they were malformed
        self.recovered = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def recover(self) -> None:
        self.recovered = True

    def __enter__(self) -> FakeExpert:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def reply(self, piece: str, attempt: int, chat: bool = True) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for the `attempt`-th request (1-based) of a piece; `chat`: the
        answer is the choice's message content, else its text (the completions endpoint)."""
        found = MARKER.search(piece)
        mode = found.group(1) if found else "clean"
        if mode == "slow":
            time.sleep(self.slow_s)
        if mode == "rate_limit" and attempt == 1:
            return 429, {"Retry-After": str(self.retry_after_s)}, b'{"error": "rate limited"}'
        if (mode == "flaky" and attempt == 1) or mode == "error500":
            return 500, {}, b'{"error": "internal"}'
        if mode == "outage" and not self.recovered:
            return 503, {}, b'{"error": "unavailable"}'
        if mode == "bad_request":
            return 400, {}, b'{"error": "prompt too long"}'
        if mode == "malformed":
            return 200, {}, b'{"choices": [{"message": {"content": "cut off'
        if mode == "empty_choices":
            return 200, {}, json.dumps({"choices": []}).encode()
        if mode == "error_body":
            return 200, {}, json.dumps({"error": {"message": "model overloaded", "code": 503}}).encode()
        if mode == "redirect":
            return 302, {"Location": f"{self.base_url}/elsewhere/chat/completions"}, b""
        trickle = {"X-Trickle-S": "0.02"} if mode == "trickle" else {"X-Cut": "1"} if mode == "cut_body" else {}
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        text = paraphrase(piece) if mode == "paraphrase" else self.answers.get(piece, default_clean(piece))
        if chat:
            choice["message"] = {"role": "assistant", **({} if mode == "no_content" else {"content": text})}
        elif mode != "no_content":
            choice["text"] = text
        if mode == "truncated":
            choice["finish_reason"] = "length"
        if mode == "reasoning_cut":
            choice.update(finish_reason="length", message={"role": "assistant", "content": None,
                                                           "reasoning_content": "Let me think"})
        if mode == "content_filter":
            choice.update(finish_reason="content_filter", message={"role": "assistant", "content": text[:3]})
        body = {"id": f"cmpl-{attempt}", "object": "chat.completion" if chat else "text_completion",
                "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": len(piece.split()), "completion_tokens": len(text.split()),
                          "total_tokens": len(piece.split()) + len(text.split())}}
        return 200, trickle, json.dumps(body).encode()

    def _check(self, path: str, headers: Any, raw: bytes) -> tuple[int, str] | str:
        """The piece a valid request asks to clean, or (status, reason) for an invalid one."""
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return 404, f"no route {path}"
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, "bad or missing bearer key"
        try:
            body = json.loads(raw)
            if path == "/v1/chat/completions":
                content = body["messages"][0]["content"]
                assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user" and "prompt" not in body
            else:
                content = body["prompt"]
                assert isinstance(content, str) and "messages" not in body
            assert body["model"] == self.model and isinstance(body["max_tokens"], int)
        except (ValueError, KeyError, IndexError, TypeError, AssertionError) as e:
            return 400, f"bad request body: {e!r}"
        prefix = self.instruction + "\n\n"
        if not content.startswith(prefix):
            return 400, "the user turn does not start with the expert instruction"
        with self._lock:
            self.max_tokens.append(body["max_tokens"])
            self.paths[path] += 1
        return content[len(prefix):]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        expert = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                """The model list (`/v1/models`), behind the same bearer key."""
                if self.path != "/v1/models":
                    self._send(404, {}, json.dumps({"error": f"no route {self.path}"}).encode())
                elif expert.api_key is not None and self.headers.get("Authorization") != f"Bearer {expert.api_key}":
                    self._send(401, {}, json.dumps({"error": "bad or missing bearer key"}).encode())
                else:
                    self._send(200, {}, json.dumps({"object": "list", "data": [
                        {"id": expert.model, "object": "model", "owned_by": "fake"}]}).encode())

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                checked = expert._check(self.path, self.headers, raw)
                if isinstance(checked, tuple):
                    with expert._lock:
                        expert.rejected.append(checked[1])
                    self._send(checked[0], {}, json.dumps({"error": checked[1]}).encode())
                    return
                with expert._lock:
                    expert.requests[checked] += 1
                    expert.times[checked].append(time.perf_counter())
                    attempt = expert.requests[checked]
                self._send(*expert.reply(checked, attempt, chat=self.path == "/v1/chat/completions"))

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if "X-Cut" in headers:  # half the body, then the connection goes
                        self.wfile.write(body[:len(body) // 2])
                        self.close_connection = True
                    elif "X-Trickle-S" not in headers:
                        self.wfile.write(body)
                    for i in range(len(body) if "X-Trickle-S" in headers else 0):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(float(headers["X-Trickle-S"]))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before the answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
                pass

        return Handler
