"""Clients for local LLM servers: the OpenAI-compatible chat API and Ollama's native chat API.

OpenAI-compatible: llama.cpp's llama-server, vLLM, SGLang, Modular MAX and Ollama's ``/v1``. The output
is constrained by ``response_format``: ``json_schema`` (OpenAI's shape), or ``json_object`` with a
``schema`` for servers that refuse the former (llama-cpp-python's server). Ollama's ``/api/chat`` takes the
schema as ``format``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import httpx

from llm_etl_provider.contract.codes import DeadLetterReason as Reason
from llm_etl_provider.contract.invocation import ApiStyle, ResponseFormat, WorkerInvocation
from llm_etl_provider.worker.exceptions import LLMRejectedError, ServerUnavailableError, TransientLLMError
from llm_etl_provider.worker.http_lanes import HttpLanes
from llm_etl_provider.worker.lean_http import LeanLanes, LeanResponse, http_client

HttpClient = httpx.AsyncClient | HttpLanes | LeanLanes


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion to ask for: shared system prompt, per-record user prompt, output schema."""

    system: str
    user: str
    schema: dict[str, Any] | None  # None: a free-text answer, unconstrained
    schema_name: str
    max_tokens: int
    temperature: float


@dataclass(frozen=True, slots=True)
class Completion:
    """The model's answer and what it cost."""

    content: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def _error_message(response: httpx.Response | LeanResponse) -> str:
    """Return the server's short error text (servers report errors, not record content)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:200] if error else ""


class LLMClient(ABC):
    """A chat client for one LLM server and model.

    :param http: the HTTP client to send requests with (its timeouts apply): :class:`HttpLanes` for many
        requests in flight
    :param base_url: the server's root, e.g. ``http://127.0.0.1:11434`` (a trailing ``/v1`` is accepted)
    :param model: the model name the server knows
    """

    api: ApiStyle

    def __init__(self, http: HttpClient, base_url: str, model: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = model

    @property
    @abstractmethod
    def chat_path(self) -> str:
        """The path chat requests are posted to."""

    @property
    @abstractmethod
    def ready_path(self) -> str:
        """A cheap GET that answers 200 once the server can serve the model."""

    @abstractmethod
    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """Return the JSON body of a chat request."""

    @abstractmethod
    def parse_response(self, body: dict[str, Any]) -> Completion:
        """Read the answer out of a chat response body."""

    async def complete(self, request: ChatRequest) -> Completion:
        """Send one chat request; raise :class:`TransientLLMError` or :class:`LLMRejectedError` on failure."""
        response = await self._send("POST", self.chat_path, json=self.request_body(request))
        try:
            body = response.json()
        except ValueError:
            raise TransientLLMError(Reason.BAD_RESPONSE, "the response body is not JSON") from None
        if not isinstance(body, dict):
            raise TransientLLMError(Reason.BAD_RESPONSE, "the response body is not a JSON object")
        try:
            return self.parse_response(body)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientLLMError(Reason.BAD_RESPONSE, "the response lacks the answer's fields") from None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response | LeanResponse:
        try:
            response = await self.http.request(method, self.base_url + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientLLMError(
                Reason.TIMEOUT, f"{type(exc).__name__} after the request timeout"
            ) from None
        except httpx.ConnectError as exc:
            raise TransientLLMError(
                Reason.CONNECT_ERROR, f"cannot connect to {self.base_url}: {exc}"
            ) from None
        except httpx.TransportError as exc:
            raise TransientLLMError(Reason.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500:
            raise TransientLLMError(
                Reason.SERVER_ERROR,
                f"HTTP {response.status_code} {_error_message(response)}".strip(),
                response.status_code,
            )
        if response.status_code >= 400:
            raise LLMRejectedError(
                Reason.LLM_REJECTED,
                f"HTTP {response.status_code} {_error_message(response)}".strip(),
                response.status_code,
            )
        return response

    async def is_ready(self) -> bool:
        """Return whether the server answers its readiness request now."""
        try:
            await self._send("GET", self.ready_path)
        except (TransientLLMError, LLMRejectedError):
            return False
        return True

    async def wait_ready(self, limit_s: float, poll_interval: float = 0.5) -> None:
        """Wait until the server is ready; raise :class:`ServerUnavailableError` after ``limit_s`` seconds."""
        deadline = time.monotonic() + limit_s
        last = "no answer yet"
        while True:
            try:
                await self._send("GET", self.ready_path)
                await self.check_model()
                return
            except (TransientLLMError, LLMRejectedError) as exc:
                last = exc.detail
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(
                    f"the {self.api} server at {self.base_url} was not ready after {limit_s:.0f} s ({last}); "
                    "check that it runs and that --llm-url and --api are right, or raise --ready-timeout"
                )
            await asyncio.sleep(poll_interval)

    async def check_model(self) -> None:  # noqa: B027 - most servers serve whatever model name they are asked
        """Raise :class:`ServerUnavailableError` if the server cannot serve the model."""

    async def parallel_slots(self) -> int | None:
        """Return how many requests the server processes at once, where it says so."""
        return None

    version_paths: tuple[tuple[str, str], ...] = ()  # (path, field) that say the server's version

    async def server_version(self) -> str | None:
        """The server's version, where it says it (for the results' provenance); None elsewhere."""
        for path, name in self.version_paths:
            try:
                version = (await self._send("GET", path)).json().get(name)
            except (TransientLLMError, LLMRejectedError, ValueError, AttributeError):
                continue
            if isinstance(version, str | int) and not isinstance(version, bool):
                return str(version)[:200]
        return None


class OpenAIClient(LLMClient):
    """The OpenAI-compatible ``/v1/chat/completions`` API."""

    api: ApiStyle = "openai"
    chat_path = "/v1/chat/completions"
    ready_path = "/v1/models"
    # vLLM and SGLang say it at /version; llama.cpp's server its build in /props
    version_paths = (("/version", "version"), ("/props", "build_info"))

    def __init__(
        self,
        http: HttpClient,
        base_url: str,
        model: str,
        *,
        response_format: ResponseFormat,
    ) -> None:
        super().__init__(http, base_url, model)
        self.response_format = response_format

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stream": False,
        }
        if request.schema is None:
            return body
        if self.response_format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": True},
            }
        else:
            body["response_format"] = {"type": "json_object", "schema": request.schema}
        return body

    def parse_response(self, body: dict[str, Any]) -> Completion:
        choice = body["choices"][0]
        content = choice["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
        usage = body.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None:
            cached = (body.get("timings") or {}).get("cache_n")  # llama.cpp
        return Completion(
            content=content,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=cached,
        )

    async def parallel_slots(self) -> int | None:
        """Return llama.cpp's slot count from ``/props``; other servers do not publish one."""
        try:
            response = await self._send("GET", "/props")
            slots = response.json().get("total_slots")
        except (TransientLLMError, LLMRejectedError, ValueError, AttributeError):
            return None
        return slots if isinstance(slots, int) and slots > 0 else None


class OllamaClient(LLMClient):
    """Ollama's native ``/api/chat`` API (``format`` schema, ``keep_alive``, ``options``)."""

    api: ApiStyle = "ollama"
    chat_path = "/api/chat"
    ready_path = "/api/tags"
    version_paths = (("/api/version", "version"),)

    def __init__(
        self,
        http: HttpClient,
        base_url: str,
        model: str,
        *,
        keep_alive: str,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(http, base_url, model)
        self.keep_alive = keep_alive
        self.options = options or {}

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
            "stream": False,
            **({} if request.schema is None else {"format": request.schema}),
            "keep_alive": self.keep_alive,
            "options": {
                "temperature": request.temperature,
                "num_predict": request.max_tokens,
                **self.options,
            },
        }

    def parse_response(self, body: dict[str, Any]) -> Completion:
        content = body["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
        return Completion(
            content=content,
            finish_reason=body.get("done_reason"),
            prompt_tokens=body.get("prompt_eval_count"),
            completion_tokens=body.get("eval_count"),
        )

    async def check_model(self) -> None:
        response = await self._send("GET", self.ready_path)
        try:
            names = {m["name"] for m in response.json()["models"]}
        except (ValueError, KeyError, TypeError):
            raise TransientLLMError(Reason.BAD_RESPONSE, "/api/tags did not list models") from None
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        if self.model not in names and wanted not in names:
            raise ServerUnavailableError(
                f"Ollama at {self.base_url} does not have model {self.model!r}; pull it first "
                f"(it has: {', '.join(sorted(names)) or 'none'})"
            )


def make_client(invocation: WorkerInvocation, http: HttpClient) -> LLMClient:
    """Return the client for the invocation's server (``--api``, ``--llm-url``, ``--model`` and the API's
    options)."""
    if invocation.api == "openai":
        return OpenAIClient(
            http, invocation.llm_url, invocation.model, response_format=invocation.response_format
        )
    if invocation.api == "ollama":
        return OllamaClient(http, invocation.llm_url, invocation.model, keep_alive=invocation.keep_alive)
    raise ValueError(f"unknown API style {invocation.api!r}")


def http_for(
    invocation: WorkerInvocation, *, timeout: httpx.Timeout, headers: dict[str, str]
) -> LeanLanes | HttpLanes:
    """The HTTP client for the invocation's LLM server: the lean one for plain ``http://`` (the pod's
    sidecar), httpx's lanes for ``https://`` (:func:`~llm_etl_provider.worker.lean_http.http_client`)."""
    return http_client(invocation.llm_url, timeout=timeout, headers=headers)
