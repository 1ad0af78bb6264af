"""A proxy in front of the real llama-server that injects the faults an LLM server shows in production.

Chat completions get a fault from a seeded schedule: HTTP 500, 503 (queue full), a connection reset, a
stall past the client's timeout, a truncated body, a body that is not JSON, or an answer that breaks the
task's schema. The first requests get every kind once, in a seeded order; after that each request gets a
random fault with probability ``rate`` and the rest pass through to the real model. Other routes (health,
slots, models) always pass. Every completion request is recorded with its prompt and the fault it got.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

FAULTS = ("error_500", "queue_full_503", "reset", "stall", "truncated", "not_json", "schema_invalid")


class FaultProxy:
    """Serve on 127.0.0.1; send each completion a fault with probability ``rate`` (seeded), else the model."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float,
        seed: int,
        faults: tuple[str, ...] = FAULTS,
        stall_seconds: float = 8.0,
        always: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream
        self.rate = rate
        self.faults = faults
        self.stall_seconds = stall_seconds
        self.always = always or {}  # prompt substring -> fault, for records that must always fail
        self._random = random.Random(seed)
        self._deck = self._random.sample(faults, len(faults))  # every kind is met, whatever the rate
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (prompt, fault or "pass")
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def choose(self, prompt: str) -> str:
        with self._lock:
            fault = next((f for text, f in self.always.items() if text in prompt), None)
            if fault is None and self._deck:
                fault = self._deck.pop()
            if fault is None:
                fault = self._random.choice(self.faults) if self._random.random() < self.rate else "pass"
            self.requests.append((prompt, fault))
            return fault

    def attempts(self) -> Counter[str]:
        """Completion requests per prompt."""
        with self._lock:
            return Counter(prompt for prompt, _ in self.requests)

    def attempts_for(self, text: str) -> int:
        """Completion requests whose prompt holds ``text``."""
        with self._lock:
            return sum(text in prompt for prompt, _ in self.requests)

    def faults_for(self, text: str) -> int:
        """Faults injected into completion requests whose prompt holds ``text``."""
        with self._lock:
            return sum(text in prompt and fault != "pass" for prompt, fault in self.requests)

    def injected(self) -> Counter[str]:
        with self._lock:
            return Counter(fault for _, fault in self.requests if fault != "pass")


def prompt_of(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._forward(b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._forward(body)
            return
        fault = self.proxy.choose(prompt_of(json.loads(body)))
        if fault == "pass":
            self._forward(body)
        elif fault == "error_500":
            self._send(500, b'{"error": {"code": 500, "message": "internal error", "type": "server_error"}}')
        elif fault == "queue_full_503":
            self._send(
                503, b'{"error": {"code": 503, "message": "server busy", "type": "unavailable_error"}}'
            )
        elif fault == "reset":
            self._reset()
        elif fault == "stall":
            time.sleep(self.proxy.stall_seconds)
            self._reset()
        elif fault == "truncated":
            upstream = self._upstream(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content[: len(upstream.content) // 2])
            self.wfile.flush()
            self._reset()
        elif fault == "not_json":
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        elif fault == "schema_invalid":
            answer = self._upstream(body).json()
            answer["choices"][0]["message"]["content"] = json.dumps({"verdict": "no such field"})
            self._send(200, json.dumps(answer).encode())
        else:
            raise ValueError(f"unknown fault {fault}")

    def _upstream(self, body: bytes) -> httpx.Response:
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        return httpx.request(
            self.command, self.proxy.upstream + self.path, content=body or None, headers=headers, timeout=600
        )

    def _forward(self, body: bytes) -> None:
        upstream = self._upstream(body)
        self._send(upstream.status_code, upstream.content, upstream.headers.get("Content-Type", ""))

    def _send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        """Close with a TCP RST, as a crashed server or a dropped connection would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
