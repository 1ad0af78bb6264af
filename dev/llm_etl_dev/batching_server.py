"""A stand-in for a GPU serving engine: an OpenAI-compatible server that models continuous batching.

It answers no faster for being idle and serves ``max_num_seqs`` requests at once, the rest waiting in a FIFO
queue, as vLLM does. A request takes ``f x (ttft + (n - 1) x itl)`` seconds for an answer of ``n`` tokens,
where the load factor ``f = 1 + (load_factor - 1) x (running - 1) / (max_num_seqs - 1)`` grows with the
requests running beside it: a batch of 256 decodes more slowly per sequence than a batch of 1, and throughput
still grows with the batch. This is the latency model of llm-d-inference-sim (the llm-d project's vLLM
simulator), whose defaults for an 8B model on one H100 are used here; that simulator could not be built here
(the Go module proxy refuses every ``github.com/llm-d`` module: 403).

Its answers are valid for the task asked: the smallest JSON instance of the request's ``response_format``
schema, choosing among an ``enum``'s values by a hash of the prompt, and about four characters a token.

    llm-etl-dev batching-server --port 8000 [--max-num-seqs 256] [--ttft-ms 80] [--itl-ms 12]
        [--load-factor 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx

from llm_etl_dev.processes import stop_process
from llm_etl_provider.backends.llama_server import free_port

MODEL_NAME = "batching-sim"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class BatchingModel:
    """The serving engine's timing.

    :param max_num_seqs: requests served at once (vLLM ``--max-num-seqs``)
    :param ttft_s: time to the first token of an answer, at a batch of one
    :param itl_s: time between tokens, at a batch of one
    :param load_factor: how much slower each request is at a full batch than alone
    :param max_waiting: requests that may wait beyond the batch before the server answers 429 (0: any)
    """

    max_num_seqs: int = 256
    ttft_s: float = 0.080
    itl_s: float = 0.012
    load_factor: float = 3.0
    max_waiting: int = 0

    def seconds(self, tokens: int, running: int) -> float:
        share = (running - 1) / (self.max_num_seqs - 1) if self.max_num_seqs > 1 else 0.0
        return (1 + (self.load_factor - 1) * share) * (self.ttft_s + (tokens - 1) * self.itl_s)


def schema_instance(schema: Any, seed: int) -> Any:
    """The smallest value valid for the JSON schema subset the tasks use (an enum's value chosen by seed)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or list(properties)
        return {name: schema_instance(properties.get(name, {}), seed) for name in required}
    if kind == "array":
        return [schema_instance(schema.get("items", {}), seed + n) for n in range(schema.get("minItems", 0))]
    if kind == "boolean":
        return seed % 2 == 0
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    return None


def answer_for(body: dict[str, Any]) -> tuple[str, int, int]:
    """The answer's text, its prompt tokens and its completion tokens."""
    messages = body.get("messages") or []
    prompt = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=4).digest(), "big")
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema") or response_format.get("schema")
    text = json.dumps(schema_instance(schema, seed)) if schema else "ok"
    return text, max(1, len(prompt) // CHARS_PER_TOKEN), max(1, -(-len(text) // CHARS_PER_TOKEN))


class BatchingEngine:
    """Schedules requests as a continuous-batching engine: at most ``max_num_seqs`` running, FIFO beyond."""

    def __init__(self, model: BatchingModel) -> None:
        self.model = model
        self.slots = asyncio.Semaphore(model.max_num_seqs)  # FIFO: waiters are woken in order
        self.running = 0
        self.waiting = 0

    async def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.model.max_waiting and self.waiting >= self.model.max_waiting and self.slots.locked():
            return 429, {"error": {"message": "the waiting queue is full", "code": 429}}
        text, prompt_tokens, tokens = answer_for(body)
        limit = body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < tokens:
            text, tokens, finish = text[: limit * CHARS_PER_TOKEN], limit, "length"
        self.waiting += 1
        async with self.slots:
            self.waiting -= 1
            self.running += 1
            try:
                await asyncio.sleep(self.model.seconds(tokens, self.running))
            finally:
                self.running -= 1
        return 200, {
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_NAME,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
        }


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


async def _serve_connection(
    engine: BatchingEngine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """HTTP/1.1 with keep-alive, enough for OpenAI clients: Content-Length bodies, JSON in and out."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            payload = await reader.readexactly(length) if length else b""
            status, data = await _route(engine, method, path.split("?", 1)[0], payload)
            body = json.dumps(data).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _route(engine: BatchingEngine, method: str, path: str, payload: bytes) -> tuple[int, Any]:
    if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]}
    if method == "GET" and path == "/health":
        return 200, {}
    if method == "POST" and path == "/v1/chat/completions":
        try:
            body = json.loads(payload)
        except ValueError:
            return 400, {"error": {"message": "the body is not JSON"}}
        if not isinstance(body, dict):
            return 400, {"error": {"message": "the body is not a JSON object"}}
        return await engine.complete(body)
    return 404, {"error": {"message": f"no route {method} {path}"}}


async def serve(host: str, port: int, model: BatchingModel) -> None:
    engine = BatchingEngine(model)
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(engine, r, w), host, port, backlog=4096, limit=1 << 22
    )
    async with server:
        await server.serve_forever()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BatchingModel()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--max-num-seqs", type=int, default=defaults.max_num_seqs, help="requests served at once"
    )
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_s * 1000, help="time to first token")
    parser.add_argument("--itl-ms", type=float, default=defaults.itl_s * 1000, help="time between tokens")
    parser.add_argument(
        "--load-factor", type=float, default=defaults.load_factor, help="slowdown at a full batch (1: none)"
    )
    parser.add_argument(
        "--max-waiting", type=int, default=0, help="queue beyond the batch; then 429 (0: any)"
    )


def model_from(args: argparse.Namespace) -> BatchingModel:
    return BatchingModel(
        max_num_seqs=args.max_num_seqs,
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
        load_factor=args.load_factor,
        max_waiting=args.max_waiting,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted, as :func:`add_arguments` parsed."""
    if args.max_num_seqs < 1:
        print("error: --max-num-seqs must be at least 1", file=sys.stderr)
        return 2
    print(f"batching server at http://{args.host}:{args.port} ({args.max_num_seqs} sequences)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, model_from(args)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


class BatchingServer:
    """Run the server in a process of its own (so that it does not share the client's event loop)."""

    def __init__(self, model: BatchingModel | None = None, port: int | None = None) -> None:
        self.model = model or BatchingModel()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_name = MODEL_NAME
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        m = self.model
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "llm_etl_dev.batching_server", "--port", str(self.port),
                "--max-num-seqs", str(m.max_num_seqs), "--ttft-ms", str(m.ttft_s * 1000),
                "--itl-ms", str(m.itl_s * 1000), "--load-factor", str(m.load_factor),
                "--max-waiting", str(m.max_waiting),
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the batching server exited with code {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("the batching server was not ready after 30 s")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            stop_process(self.process, 10, first=signal.SIGINT)


if __name__ == "__main__":
    raise SystemExit(main())
