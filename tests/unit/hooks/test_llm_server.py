from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from llm_etl_provider.contract.invocation import WorkerInvocation
from llm_etl_provider.exceptions import LLMConnectionError
from llm_etl_provider.hooks.llm_server import LLMServerHook

INVOCATION = WorkerInvocation(
    task="sentiment", input=Path("in.jsonl"), output="log", llm_url="http://pod:1", api="openai", model="pod"
)


def worker_args(server) -> list[str]:
    """The server's flags in the worker's argv once the server serves the invocation."""
    argv = server.serve(INVOCATION).to_argv()
    flags = ("--llm-url", "--api", "--model", "--response-format")
    return [item for i in range(0, len(argv), 2) if argv[i] in flags for item in argv[i : i + 2]]


def set_conn(monkeypatch, conn_id="llm_etl_default", **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "llm_etl", **fields}))


def test_connection_maps_to_worker_settings(monkeypatch):
    set_conn(monkeypatch, host="http://ollama.local:11434/", extra={"api": "ollama", "model": "llama3.2:3b"})
    server = LLMServerHook().get_server()
    assert worker_args(server) == [
        "--llm-url", "http://ollama.local:11434", "--api", "ollama", "--model", "llama3.2:3b",
        "--response-format", "json_schema",
    ]  # fmt: skip
    assert LLMServerHook().get_server(model="other").model == "other"


def test_host_without_scheme_and_a_separate_port(monkeypatch):
    set_conn(monkeypatch, "llm", host="10.0.0.5", port=8080, extra={"api": "openai", "model": "m"})
    assert LLMServerHook("llm").get_server().base_url == "http://10.0.0.5:8080"


def test_the_api_key_never_shows_in_repr_or_arguments(monkeypatch):
    set_conn(monkeypatch, host="http://h:1", password="sk-SECRET", extra={"api": "openai", "model": "m"})
    server = LLMServerHook().get_server()
    assert server.api_key == "sk-SECRET"
    assert "SECRET" not in repr(server)
    assert "SECRET" not in " ".join(server.serve(INVOCATION).to_argv())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"extra": {"model": "m"}}, "no Base URL"),
        ({"host": "ftp://h", "extra": {"model": "m"}}, "not an http"),
        ({"host": "http://h", "extra": {"api": "grpc", "model": "m"}}, "api must be one of"),
        ({"host": "http://h", "extra": {"api": "openai"}}, "names no model"),
        ({"host": "http://h", "extra": {"model": "m", "response_format": "xml"}}, "response_format"),
    ],
)
def test_bad_connections_say_what_is_wrong(monkeypatch, fields, message):
    set_conn(monkeypatch, **fields)
    with pytest.raises(LLMConnectionError, match=message):
        LLMServerHook().get_server()


def serve(monkeypatch, handler):
    calls = []

    def get(url, **kwargs):
        calls.append((url, kwargs))
        with httpx.Client(transport=httpx.MockTransport(handler)) as client:
            return client.get(url, headers=kwargs.get("headers"))

    monkeypatch.setattr(httpx, "get", get)
    return calls


def test_connection_test_lists_models_and_generates_nothing(monkeypatch):
    set_conn(monkeypatch, host="http://ollama:11434", extra={"api": "ollama", "model": "llama3.2:3b"})
    calls = serve(monkeypatch, lambda r: httpx.Response(200, json={"models": [{"name": "llama3.2:3b"}]}))
    assert LLMServerHook().test_connection() == (
        True,
        "ollama server at http://ollama:11434 serves llama3.2:3b",
    )
    assert [url for url, _ in calls] == ["http://ollama:11434/api/tags"]


def test_connection_test_names_a_missing_model(monkeypatch):
    set_conn(monkeypatch, host="http://vllm:8000", password="k", extra={"api": "openai", "model": "big"})
    calls = serve(monkeypatch, lambda r: httpx.Response(200, json={"data": [{"id": "small"}]}))
    ok, message = LLMServerHook().test_connection()
    assert not ok
    assert "does not serve 'big' (it has: small)" in message
    assert calls[0][1]["headers"] == {"Authorization": "Bearer k"}


def test_connection_test_reports_an_unreachable_server(monkeypatch):
    set_conn(monkeypatch, host="http://nowhere:1", extra={"api": "openai", "model": "m"})

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    serve(monkeypatch, refuse)
    ok, message = LLMServerHook().test_connection()
    assert not ok
    assert message.startswith("cannot reach http://nowhere:1")
