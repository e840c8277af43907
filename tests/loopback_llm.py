"""An OpenAI-compatible chat endpoint on loopback, answering from a Python callable, for tests of the HTTP client.

The real server (vLLM) is tested in test_vllm_integration.py; this one lets a test script exact bytes, statuses,
delays and headers that a real server rarely produces. `respond(request) -> Reply` sees the parsed JSON body.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message; ignored when `body` is given
    body: str | None = None  # a raw HTTP body (surrogates allowed), for answers that are not chat completions
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    finish_reason: str = "stop"

    def data(self) -> bytes:
        body = self.body if self.body is not None else json.dumps({
            "id": "x", "object": "chat.completion", "model": LoopbackLLM.MODEL,
            "choices": [{"index": 0, "finish_reason": self.finish_reason,
                         "message": {"role": "assistant", "content": self.content}}]})
        return body.encode("utf-8", "surrogatepass")


class LoopbackLLM:
    """Serves `GET /v1/models` and `POST /v1/chat/completions`; records each request (with its path and auth)."""

    MODEL = "scripted-model"

    def __init__(self, respond: Callable[[dict], Reply]):
        self.respond = respond
        self.requests: list[dict] = []
        ep = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests

            def log_message(self, *a):  # keep pytest output clean
                pass

            def _send(self, status: int, data: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": LoopbackLLM.MODEL}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                ep.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **request})
                r = ep.respond(request)
                time.sleep(r.delay)
                self._send(r.status, r.data(), r.headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = ("127.0.0.1", self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def schema_name(request: dict) -> str:
    """The pydantic model a request asks for (the client names the json_schema after it)."""
    return request["response_format"]["json_schema"]["name"]
