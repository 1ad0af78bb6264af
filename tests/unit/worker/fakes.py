"""A scripted LLM server for ``httpx.MockTransport``: OpenAI-compatible or Ollama, with injectable faults."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from llm_etl_provider.contract.invocation import WorkerInvocation

Fault = str  # "500", "503", "400", "reset", "connect", "timeout", "not_json", "no_choices", "invalid", "cut"


def worker_flags(**flags: Any) -> WorkerInvocation:
    """An invocation with ``flags`` set, for the engine to read its settings from; its paths and server are
    placeholders (a test hands the engine its reader, sink and client)."""
    placeholders: dict[str, Any] = {
        "task": "sentiment",
        "input": Path("in.jsonl"),
        "output": "out.jsonl",
        "llm_url": "http://llm",
        "model": "smollm2",
    }
    return WorkerInvocation(**{**placeholders, **flags})


def default_answer(user: str) -> dict[str, Any]:
    return {"sentiment": "negative" if "bad" in user else "positive"}


class FakeLLMServer:
    """Answer chats from ``answer(user_prompt)``, serving ``faults[user_prompt]`` first, in order."""

    def __init__(
        self,
        api: str = "openai",
        *,
        answer: Callable[[str], dict[str, Any]] = default_answer,
        slots: int | None = 2,
        models: tuple[str, ...] = ("smollm2:latest",),
        ready_after: int = 0,
    ) -> None:
        self.api = api
        self.answer = answer
        self.slots = slots
        self.models = models
        self.ready_after = ready_after
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.chat_bodies: list[dict[str, Any]] = []
        self.readiness_checks = 0
        self.down = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if request.method == "GET" and path in ("/v1/models", "/api/tags"):
            self.readiness_checks += 1
            if self.readiness_checks <= self.ready_after:
                return httpx.Response(503, json={"error": {"message": "Loading model", "code": 503}})
            if path == "/api/tags":
                return httpx.Response(200, json={"models": [{"name": m, "model": m} for m in self.models]})
            return httpx.Response(200, json={"object": "list", "data": [{"id": "smollm2"}]})
        if request.method == "GET" and path == "/props" and self.api == "openai" and self.slots:
            return httpx.Response(200, json={"total_slots": self.slots, "build_info": "b6700-fake"})
        if request.method == "GET" and path == "/api/version" and self.api == "ollama":
            return httpx.Response(200, json={"version": "0.12.6"})
        if request.method == "POST" and path in ("/v1/chat/completions", "/api/chat"):
            body = json.loads(request.content)
            self.chat_bodies.append(body)
            user = body["messages"][-1]["content"]
            fault = self.faults[user].pop(0) if self.faults.get(user) else None
            return self._chat(request, user, fault)
        return httpx.Response(404, json={"error": "not found"})

    def _chat(self, request: httpx.Request, user: str, fault: Fault | None) -> httpx.Response:
        if fault in ("500", "503", "400"):
            return httpx.Response(int(fault), json={"error": {"message": f"injected {fault}"}})
        if fault == "reset":
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        if fault == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if fault == "not_json":
            return httpx.Response(200, text="<html>gateway</html>")
        if fault == "no_choices":
            return httpx.Response(200, json={"choices": []})
        content = json.dumps(self.answer(user))
        finish = "stop"
        if fault == "invalid":
            content = '{"sentiment": "ecstatic"}'
        elif fault == "cut":
            content, finish = content[:5], "length"
        if self.api == "ollama":
            return httpx.Response(
                200,
                json={
                    "model": "smollm2",
                    "message": {"role": "assistant", "content": content},
                    "done": True,
                    "done_reason": finish,
                    "prompt_eval_count": 40,
                    "eval_count": 7,
                },
            )
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
                "usage": {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47},
                "timings": {"cache_n": 30},
            },
        )


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no cleanup is owed."""


def crashing(sink_class: type[Any], crash_after: int, *, dead_letters_count: bool = False) -> type[Any]:
    """``sink_class``, made to raise :class:`Crash` at the write after its ``crash_after``-th (of results,
    and of dead letters too if ``dead_letters_count``)."""

    class Crashing(sink_class):  # type: ignore[misc]
        writes = 0

        def _count(self) -> None:
            Crashing.writes += 1
            if Crashing.writes > crash_after:
                raise Crash

        def write_result(self, line: dict[str, Any]) -> None:
            self._count()
            super().write_result(line)

        def write_dead_letter(self, line: dict[str, Any]) -> None:
            if dead_letters_count:
                self._count()
            super().write_dead_letter(line)

    return Crashing
