"""A real HTTP server on this machine that records every request: an OpenAI-compatible endpoint for the
`openai` backend (GET /v1/models, POST /v1/chat/completions) and a catch-all that answers 404 for anything else
(a model hub endpoint, for instance). Tests read `requests` to see what our code sent, and where."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_ID = "recorder-model"
CONTEXT_LENGTH = 32768
ANSWER = "recorded answer (encounter of 2020-01-01)"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Recorder:
    host: str
    port: int
    requests: list[RecordedRequest] = field(default_factory=list)

    def url(self, host: str | None = None, path: str = "/v1") -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def completions(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the outgoing interface's), or None without one.
    A UDP connect only picks a route; nothing is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def start_recorder(bind: str = "127.0.0.1") -> tuple[Recorder, ThreadingHTTPServer]:
    recorder_box: list[Recorder] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder_box[0].requests.append(RecordedRequest(self.command, self.path, dict(self.headers), body))

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._record()
            if self.path.rstrip("/").endswith("/v1/models"):
                self._send(200, {"object": "list",
                                 "data": [{"id": MODEL_ID, "object": "model", "max_model_len": CONTEXT_LENGTH}]})
            else:
                self._send(404, {"error": "not found"})

        def do_HEAD(self) -> None:  # noqa: N802
            self._record()
            self.send_response(404)
            self.end_headers()

        def do_POST(self) -> None:  # noqa: N802
            self._record()
            if self.path.rstrip("/").endswith("/v1/chat/completions"):
                self._send(200, {"id": "x", "object": "chat.completion", "model": MODEL_ID,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer((bind, 0), Handler)
    server.daemon_threads = True
    recorder_box.append(Recorder(host="127.0.0.1", port=server.server_address[1]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return recorder_box[0], server
