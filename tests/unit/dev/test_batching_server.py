"""The stand-in GPU engine: valid answers for each task, max_num_seqs at once, FIFO beyond, 429 when full."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from llm_etl_dev.batching_server import BatchingModel, BatchingServer, schema_instance
from llm_etl_provider.contract.invocation import TASK_NAMES
from llm_etl_provider.worker.clients import ChatRequest, OpenAIClient
from llm_etl_provider.worker.tasks import task_for

CUSTOM_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 3}, "score": {"type": "integer", "minimum": 1}},
    "required": ["summary", "score"],
}


def task(name: str):
    if name == "custom":
        return task_for(name, system_prompt="Summarise.", template="{text}", schema=json.dumps(CUSTOM_SCHEMA))
    return task_for(name, template="{text}", **({"categories": ("a", "b")} if name == "tags" else {}))


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_its_answer_is_valid_for_every_task(name, seed):
    spec = task(name)
    spec.parse(json.dumps(schema_instance(spec.schema, seed)), {"text": "a text"})


def test_it_serves_max_num_seqs_at_once_and_queues_the_rest_in_order():
    model = BatchingModel(max_num_seqs=4, ttft_s=0.2, itl_s=0.0, load_factor=1.0)
    spec = task("sentiment")

    async def go() -> list[float]:
        async with httpx.AsyncClient(timeout=30) as http:
            client = OpenAIClient(http, server.url, server.model_name, response_format="json_schema")
            started = time.monotonic()

            async def one(n: int) -> float:
                request = ChatRequest(spec.system_prompt, f"text {n}", spec.schema, spec.name, 24, 0.0)
                completion = await client.complete(request)
                spec.parse(completion.content, {})
                assert completion.completion_tokens
                return time.monotonic() - started

            return await asyncio.gather(*(one(n) for n in range(8)))

    with BatchingServer(model) as server:
        finished = asyncio.run(go())
    first, second = sorted(finished)[:4], sorted(finished)[4:]
    assert max(first) < 0.39  # one batch of four: 0.2 s each
    assert min(second) >= 0.39  # the next four waited for a slot


def test_a_full_queue_answers_429():
    model = BatchingModel(max_num_seqs=1, ttft_s=0.3, itl_s=0.0, max_waiting=1)

    async def go() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"messages": [{"role": "user", "content": "x"}]}
            responses = await asyncio.gather(
                *(http.post(f"{server.url}/v1/chat/completions", json=body) for _ in range(4))
            )
            return sorted(r.status_code for r in responses)

    with BatchingServer(model) as server:
        assert asyncio.run(go()) == [200, 200, 429, 429]
