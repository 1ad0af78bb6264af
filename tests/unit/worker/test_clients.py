from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from llm_etl_provider.worker.clients import ChatRequest, OllamaClient, OpenAIClient, make_client
from llm_etl_provider.worker.exceptions import LLMRejectedError, ServerUnavailableError, TransientLLMError
from tests.unit.worker.fakes import FakeLLMServer, worker_flags

SCHEMA = {"type": "object", "properties": {"sentiment": {"type": "string"}}, "required": ["sentiment"]}
REQUEST = ChatRequest(
    system="Classify.",
    user="great drug",
    schema=SCHEMA,
    schema_name="sentiment",
    max_tokens=16,
    temperature=0.0,
)


def run(coro):
    return asyncio.run(coro)


async def with_client(server: FakeLLMServer, action, **kwargs):
    async with httpx.AsyncClient(transport=server.transport()) as http:
        client = make_client(worker_flags(api=server.api, llm_url="http://llm:8080/v1/", **kwargs), http)
        return await action(client)


def test_openai_request_uses_json_schema_and_reads_usage():
    server = FakeLLMServer("openai")
    completion = run(with_client(server, lambda c: c.complete(REQUEST)))
    body = server.chat_bodies[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sentiment", "schema": SCHEMA, "strict": True},
    }
    assert body["messages"] == [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "great drug"},
    ]
    assert (body["model"], body["temperature"], body["max_tokens"], body["stream"]) == (
        "smollm2",
        0.0,
        16,
        False,
    )
    assert completion.content == '{"sentiment": "positive"}'
    assert (completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens) == (40, 7, 30)
    assert completion.finish_reason == "stop"


def test_openai_json_object_shape_for_servers_that_refuse_json_schema():
    server = FakeLLMServer("openai")
    run(with_client(server, lambda c: c.complete(REQUEST), response_format="json_object"))
    assert server.chat_bodies[0]["response_format"] == {"type": "json_object", "schema": SCHEMA}


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_a_free_text_request_asks_for_no_format(api):
    server = FakeLLMServer(api)
    run(with_client(server, lambda c: c.complete(dataclasses.replace(REQUEST, schema=None))))
    body = server.chat_bodies[0]
    assert "response_format" not in body
    assert "format" not in body


def test_ollama_request_sends_format_keep_alive_and_options():
    server = FakeLLMServer("ollama")
    completion = run(with_client(server, lambda c: c.complete(REQUEST), keep_alive="30m"))
    body = server.chat_bodies[0]
    assert body["format"] == SCHEMA
    assert body["keep_alive"] == "30m"
    assert body["options"] == {"temperature": 0.0, "num_predict": 16}
    assert body["stream"] is False
    assert (completion.prompt_tokens, completion.completion_tokens) == (40, 7)


@pytest.mark.parametrize(
    ("fault", "error", "reason"),
    [
        ("500", TransientLLMError, "server_error"),
        ("503", TransientLLMError, "server_error"),
        ("reset", TransientLLMError, "connection_error"),
        ("connect", TransientLLMError, "connect_error"),
        ("timeout", TransientLLMError, "timeout"),
        ("not_json", TransientLLMError, "bad_response"),
        ("no_choices", TransientLLMError, "bad_response"),
        ("400", LLMRejectedError, "llm_rejected"),
    ],
)
def test_failures_map_to_transient_or_rejected(fault, error, reason):
    server = FakeLLMServer("openai")
    server.faults["great drug"].append(fault)
    with pytest.raises(error) as info:
        run(with_client(server, lambda c: c.complete(REQUEST)))
    assert info.value.reason == reason


def test_wait_ready_polls_until_the_server_has_loaded():
    server = FakeLLMServer("openai", ready_after=3)
    run(with_client(server, lambda c: c.wait_ready(5.0, poll_interval=0.01)))
    assert server.readiness_checks == 4


def test_wait_ready_gives_up_with_a_clear_error():
    server = FakeLLMServer("openai", ready_after=10**6)
    with pytest.raises(
        ServerUnavailableError, match=r"not ready after 0 s \(HTTP 503 Loading model\).*--ready-timeout"
    ):
        run(with_client(server, lambda c: c.wait_ready(0.05, poll_interval=0.01)))


def test_ollama_readiness_requires_the_model_to_be_pulled():
    server = FakeLLMServer("ollama", models=("llama3:8b",))
    with pytest.raises(ServerUnavailableError, match=r"does not have model 'smollm2'.*llama3:8b"):
        run(with_client(server, lambda c: c.wait_ready(1.0)))
    run(with_client(FakeLLMServer("ollama", models=("smollm2:latest",)), lambda c: c.wait_ready(1.0)))


def test_parallel_slots_come_from_llama_cpp_props_only():
    assert run(with_client(FakeLLMServer("openai", slots=6), lambda c: c.parallel_slots())) == 6
    assert run(with_client(FakeLLMServer("openai", slots=None), lambda c: c.parallel_slots())) is None
    assert run(with_client(FakeLLMServer("ollama"), lambda c: c.parallel_slots())) is None


def test_base_url_accepts_a_trailing_v1():
    http = httpx.AsyncClient()
    assert OpenAIClient(http, "http://h:1/v1/", "m", response_format="json_schema").base_url == "http://h:1"
    assert OllamaClient(http, "http://h:11434", "m", keep_alive="5m").base_url == "http://h:11434"
    run(http.aclose())
