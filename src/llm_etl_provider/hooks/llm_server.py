"""A thin hook from an Airflow connection to the LLM server settings the worker needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from airflow.sdk import BaseHook

from llm_etl_provider.contract.invocation import (
    API_STYLES,
    CONNECTION_API,
    RESPONSE_FORMATS,
    ApiStyle,
    ResponseFormat,
    WorkerInvocation,
    default_of,
)
from llm_etl_provider.exceptions import LLMConnectionError


@dataclass(frozen=True)
class LLMServer:
    """Where the worker finds the LLM and how to talk to it (never holds the API key's value in ``repr``)."""

    base_url: str
    api: ApiStyle
    model: str
    response_format: ResponseFormat
    api_key: str | None = None

    def __repr__(self) -> str:
        return (
            f"LLMServer(base_url={self.base_url!r}, api={self.api!r}, model={self.model!r}, "
            f"response_format={self.response_format!r}, api_key={'***' if self.api_key else None})"
        )

    def serve(self, invocation: WorkerInvocation) -> WorkerInvocation:
        """``invocation`` enriching through this server (the key travels in the environment, not in it)."""
        return dataclasses.replace(
            invocation,
            llm_url=self.base_url,
            api=self.api,
            model=self.model,
            response_format=self.response_format,
        )

    @property
    def models_path(self) -> str:
        return "/api/tags" if self.api == "ollama" else "/v1/models"


class LLMServerHook(BaseHook):
    """Read an ``llm_etl`` connection: base URL, API style, model, optional key.

    :param llm_conn_id: the connection id
    """

    conn_name_attr = "llm_conn_id"
    default_conn_name = "llm_etl_default"
    conn_type = "llm_etl"
    hook_name = "LLM server (Ollama or OpenAI-compatible)"

    def __init__(self, llm_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.llm_conn_id = llm_conn_id

    def get_server(self, model: str | None = None) -> LLMServer:
        """Return the server settings; ``model`` overrides the connection's model."""
        conn = self.get_connection(self.llm_conn_id)
        extra = conn.extra_dejson
        host = (conn.host or "").strip()
        if not host:
            raise LLMConnectionError(f"connection {self.llm_conn_id!r} has no Base URL (host)")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}"
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMConnectionError(f"connection {self.llm_conn_id!r}: {host!r} is not an http(s) URL")
        if conn.port and parts.port is None:
            host = f"{parts.scheme}://{parts.hostname}:{conn.port}{parts.path}"
        api = extra.get("api") or CONNECTION_API
        if api not in API_STYLES:
            raise LLMConnectionError(
                f"connection {self.llm_conn_id!r}: api must be one of {API_STYLES}, not {api!r}"
            )
        response_format = extra.get("response_format") or default_of("response_format")
        if response_format not in RESPONSE_FORMATS:
            raise LLMConnectionError(
                f"connection {self.llm_conn_id!r}: response_format must be one of {RESPONSE_FORMATS}"
            )
        chosen = model or extra.get("model")
        if not chosen:
            raise LLMConnectionError(f"connection {self.llm_conn_id!r} names no model, and none was given")
        return LLMServer(
            base_url=host.rstrip("/"),
            api=cast(ApiStyle, api),
            model=chosen,
            response_format=cast(ResponseFormat, response_format),
            api_key=conn.password or None,
        )

    def test_connection(self) -> tuple[bool, str]:
        """Ask the server for its models; generate nothing."""
        try:
            server = self.get_server()
        except LLMConnectionError as exc:
            return False, str(exc)
        headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        try:
            response = httpx.get(server.base_url + server.models_path, headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            return False, f"cannot reach {server.base_url}: {exc}"
        if response.status_code != 200:
            return False, f"{server.base_url}{server.models_path} answered HTTP {response.status_code}"
        try:
            body = response.json()
            listed = body["models"] if server.api == "ollama" else body["data"]
            names = {m.get("name") or m.get("id") for m in listed}
        except (ValueError, KeyError, TypeError, AttributeError):
            return False, f"{server.base_url}{server.models_path} did not list models"
        if server.model not in names and f"{server.model}:latest" not in names:
            served = ", ".join(sorted(map(str, names)))
            return False, f"the server is up but does not serve {server.model!r} (it has: {served})"
        return True, f"{server.api} server at {server.base_url} serves {server.model}"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form (provider info declares the same; this is the fallback)."""
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": "API key (optional)"},
            "placeholders": {"host": "http://127.0.0.1:11434"},
        }
