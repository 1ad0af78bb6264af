"""A small Ollama for the tests: Ollama's documented ``/api/*`` shapes, answered by a real llama-server.

No registry ships Ollama, so this follows its API reference (``/api/chat``, ``/api/tags``, ``/api/version``):
requests are translated to llama-server's OpenAI-compatible API, so the answers come from the real model.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class FakeOllama:
    """Serve Ollama's API on 127.0.0.1, backed by an OpenAI-compatible server, for one model name."""

    def __init__(self, backend_url: str, model: str = "smollm2:latest") -> None:
        self.backend_url = backend_url
        self.model = model
        self.requests: list[dict[str, Any]] = []
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeOllama:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def knows(self, name: str) -> bool:
        return name in (self.model, self.model.removesuffix(":latest"))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOllama
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._json(200, {"version": "0.0.0-fake"})
        elif self.path == "/api/tags":
            model = {
                "name": self.fake.model,
                "model": self.fake.model,
                "modified_at": "2026-11-01T00:00:00Z",
                "size": 98_362_432,
                "digest": "b179c9523d0e",
                "details": {
                    "format": "gguf",
                    "family": "llama",
                    "parameter_size": "135M",
                    "quantization_level": "Q4_1",
                },
            }
            self._json(200, {"models": [model]})
        elif self.path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._json(400, {"error": "invalid JSON body"})
            return
        if self.path != "/api/chat":
            self._json(404, {"error": "not found"})
            return
        self.fake.requests.append(body)
        if not self.fake.knows(body.get("model", "")):
            self._json(404, {"error": f'model "{body.get("model")}" not found, try pulling it first'})
            return
        options = body.get("options") or {}
        request: dict[str, Any] = {
            "model": body["model"],
            "messages": body["messages"],
            "temperature": options.get("temperature", 0.8),
            "max_tokens": options.get("num_predict", 128),
        }
        if isinstance(body.get("format"), dict):
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "format", "schema": body["format"]},
            }
        elif body.get("format") == "json":
            request["response_format"] = {"type": "json_object"}
        started = time.monotonic_ns()
        try:
            answer = httpx.post(
                self.fake.backend_url + "/v1/chat/completions", json=request, timeout=300
            ).json()
        except httpx.HTTPError as exc:
            self._json(500, {"error": f"runner failed: {exc}"})
            return
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
        final = {
            "model": body["model"],
            "created_at": datetime.now(UTC).isoformat(),
            "message": {"role": "assistant", "content": choice["message"]["content"]},
            "done": True,
            "done_reason": "length" if choice.get("finish_reason") == "length" else "stop",
            "total_duration": time.monotonic_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": usage.get("prompt_tokens", 0),
            "eval_count": usage.get("completion_tokens", 0),
        }
        if body.get("stream", True):  # Ollama streams unless told not to: NDJSON chunks, the last one "done"
            chunks = [
                {**final, "done": False, "message": final["message"]} | {"done_reason": None},
                {**final, "message": {"role": "assistant", "content": ""}},
            ]
            data = b"".join(json.dumps(c).encode() + b"\n" for c in chunks)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._json(200, final)
