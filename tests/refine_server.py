"""A served refine model on loopback for tests: an OpenAI-compatible chat endpoint that answers
each numbered chunk with a deterministic program, like a (very simple) trained refine model.

Lines with share/cookie/subscribe boilerplate are removed; a chunk containing "Advertisement"
gets two invalid ops (so it falls back); anything else is keep_all(). A chunk containing
`refuse_marker` gets HTTP 400 (a provider refusing one document); once `down_when()` is true
every request gets HTTP 500 (the model server died mid-run).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOISE = re.compile(r"share|cookie|subscribe|newsletter", re.I)
NUMBERED = re.compile(r"^\[(\d+)\] (.*)$")


def program_for(content: str) -> str:
    numbered = [(int(m.group(1)), m.group(2)) for m in map(NUMBERED.match, content.split("\n")) if m]
    if any("Advertisement" in text for _, text in numbered):
        return "remove_lines(start=999999, end=999999)\nexplode()"
    ops = [f"remove_lines(start={i}, end={i})" for i, text in numbered if NOISE.search(text)]
    return "\n".join(ops) or "keep_all()"


class RefineServer:
    def __init__(self) -> None:
        self.refuse_marker: str | None = None
        self.down_when = lambda: False
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                server.requests += 1
                refused = server.refuse_marker is not None and server.refuse_marker in content
                if refused or server.down_when():
                    self.send_response(400 if refused else 500)
                    self.end_headers()
                    self.wfile.write(b"refused: content policy" if refused else b"model server crashed")
                    return
                reply = {"choices": [{"message": {"role": "assistant", "content": program_for(content)}}],
                         "usage": {"prompt_tokens": len(content) // 4, "completion_tokens": 8}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RefineServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
