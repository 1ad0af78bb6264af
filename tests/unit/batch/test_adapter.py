"""The ``llm-etl`` batch adapter against common.ai's own interface (no server: refusals and mappings)."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from airflow.providers.common.ai.batch import base
from airflow.providers.common.ai.batch.output_schema import build_output_spec, validate_extracted_output
from airflow.providers.common.ai.exceptions import (
    LLMBatchInputError,
    LLMBatchLimitExceededError,
    LLMBatchModelMismatchError,
)
from pydantic import BaseModel

from llm_etl_provider.batch.adapter import LLMEtlBatchAdapter, _raw_item
from llm_etl_provider.batch.job import (
    BATCH_FILE,
    STATUS_FILE,
    BatchNotFoundError,
    BatchResult,
    LocalBatchJobs,
    batch_id_of,
    read_results,
)
from llm_etl_provider.batch.kubernetes import KubernetesBatchJobs
from llm_etl_provider.config import LLMEtlConfig, env_var

KEY = "0123456789abcdef"


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]


@pytest.fixture
def adapter(tmp_path, monkeypatch) -> LLMEtlBatchAdapter:
    monkeypatch.setenv(env_var("execution_mode"), "local")
    return LLMEtlBatchAdapter(client=LocalBatchJobs(str(tmp_path)))


def test_every_method_of_common_ai_s_interface_is_implemented_with_its_signature():
    """The interface is experimental upstream: a change of it shows here first."""
    abstract = base.BatchAdapter.__abstractmethods__
    assert not LLMEtlBatchAdapter.__abstractmethods__
    for name in abstract:
        ours, theirs = (
            inspect.signature(getattr(LLMEtlBatchAdapter, name)),
            inspect.signature(getattr(base.BatchAdapter, name)),
        )
        assert list(ours.parameters) == list(theirs.parameters), name
    for attribute in ("name", "conn_types", "max_requests", "max_payload_bytes", "allows_per_request_model"):
        assert attribute in vars(LLMEtlBatchAdapter), attribute
    # common.ai builds every adapter from a connection's password and host alone
    LLMEtlBatchAdapter(api_key="k", base_url="http://127.0.0.1:1")


def test_a_batch_that_asks_prompts_differently_is_refused_before_anything_is_staged(adapter, tmp_path):
    spec = build_output_spec(Sentiment)
    check = lambda requests, **kw: adapter.validate_requests(  # noqa: E731
        requests, model="m", output_spec=spec, idempotency_key=KEY, **kw
    )
    check([{"prompt": "a"}, {"prompt": "b", "system_prompt": "x"}], system_prompt="x")  # the same: kept
    with pytest.raises(LLMBatchInputError, match="request 1 sets its own system_prompt"):
        check([{"prompt": "a"}, {"prompt": "b", "system_prompt": "other"}], system_prompt="x")
    with pytest.raises(LLMBatchInputError, match="request 0 sets its own max_tokens"):
        check([{"prompt": "a", "max_tokens": 5}], max_tokens=32)
    with pytest.raises(LLMBatchModelMismatchError):
        check([{"prompt": "a", "model": "llm-etl:other"}])
    with pytest.raises(LLMBatchInputError, match=r"request_params \['top_k'\] are not settings"):
        check([{"prompt": "a"}], request_params={"top_k": 3})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({}, "worker_image"),  # no image is published: the deployment must name its own
        ({"worker_image": "w@sha256:" + "0" * 64, "backend": "vllm", "model_source": "object"}, "vllm"),
        ({"worker_image": "w@sha256:" + "0" * 64, "model_source": "pvc"}, "model_claim"),
    ],
)
def test_kubernetes_execution_refuses_pods_its_settings_cannot_make_before_anything_is_created(
    monkeypatch, options, said
):
    """The pods are built, not created, when the requests are validated: no cluster is reached."""
    for name, value in {"execution_mode": "kubernetes", **options}.items():
        monkeypatch.setenv(env_var(name), value)
    adapter = LLMEtlBatchAdapter()
    assert isinstance(adapter.jobs, KubernetesBatchJobs)
    with pytest.raises(LLMBatchInputError, match=said):
        adapter.validate_requests(
            [{"prompt": "a"}], model="m", output_spec=build_output_spec(str), idempotency_key=KEY
        )


def _pod(
    phase: str,
    *,
    reason: str | None = None,
    waiting: str | None = None,
    age: float = 0,
    scheduled: bool = True,
) -> Any:
    from kubernetes.client import models as k8s

    created = datetime.now(UTC) - timedelta(seconds=age)
    conditions = [k8s.V1PodCondition(type="PodScheduled", status="True", last_transition_time=created)]
    state = k8s.V1ContainerState(
        waiting=k8s.V1ContainerStateWaiting(reason=waiting) if waiting else None,
        terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled") if reason else None,
    )
    container = k8s.V1ContainerStatus(
        name="base", image="w", image_id="", ready=False, restart_count=0, state=state
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="p", creation_timestamp=created),
        status=k8s.V1PodStatus(
            phase=phase, container_statuses=[container], conditions=conditions if scheduled else []
        ),
    )


@pytest.mark.parametrize(
    ("pod_of", "status", "said"),
    [
        (lambda: _pod("Running"), None, None),
        (lambda: _pod("Pending", waiting="ContainerCreating", age=10), None, None),
        (lambda: _pod("Succeeded"), None, None),
        (lambda: None, "failed", "is gone"),
        (lambda: _pod("Failed", reason="OOMKilled"), "failed", "base OOMKilled"),
        (lambda: _pod("Pending", waiting="InvalidImageName"), "failed", "InvalidImageName"),
        (lambda: _pod("Pending", waiting="ImagePullBackOff", age=10), None, None),  # a registry may come back
        (lambda: _pod("Pending", waiting="ImagePullBackOff", age=4000), "failed", "startup_timeout_seconds"),
        (lambda: _pod("Pending", age=4000, scheduled=False), "failed", "not scheduled"),
    ],
)
def test_a_batch_pod_s_state_ends_the_batch_only_where_no_wait_helps(pod_of, status, said):
    jobs = KubernetesBatchJobs(LLMEtlConfig(startup_timeout_seconds=1800))
    ended = jobs._pod_state(pod_of(), "shard 0's pod")  # made now: its age is the one given
    assert (ended and ended.status) == status
    if said:
        assert ended is not None
        assert said in str(ended.error)


def test_a_shard_pod_queued_for_a_gpu_waits_while_another_pod_of_its_batch_runs():
    jobs = KubernetesBatchJobs(LLMEtlConfig(startup_timeout_seconds=1800))
    unplaced = _pod("Pending", age=4000, scheduled=False)
    assert jobs._pod_state(unplaced, "shard 3's pod", queue=True) is None
    placed = _pod("Pending", waiting="ImagePullBackOff", age=4000)
    assert jobs._pod_state(placed, "shard 3's pod", queue=True) is not None  # placed: no GPU to wait for


@pytest.mark.parametrize(
    ("result", "output_type", "status", "value"),
    [
        (BatchResult(f"{KEY}-3", {"sentiment": "positive"}, "m", {"input_tokens": 9}, "stop"),
         Sentiment, "success", {"sentiment": "positive"}),
        (BatchResult(f"{KEY}-0", {"text": "Bonjour"}, "m", None, "stop"), str, "success", "Bonjour"),
        (BatchResult(f"{KEY}-1", None, reason="invalid_output", detail="not JSON"),
         Sentiment, "invalid", None),
        (BatchResult(f"{KEY}-2", None, reason="timeout", detail="no answer within 60 s"),
         Sentiment, "errored", None),
    ],
)  # fmt: skip
def test_results_map_to_common_ai_s_items_and_outputs(adapter, result, output_type, status, value):
    item = _raw_item(result)
    assert item.index == int(result.custom_id.rsplit("-", 1)[1])
    spec = build_output_spec(output_type)
    if status == "errored":
        assert item.provider_status == "errored"
        assert item.error == {
            "type": "timeout",
            "message": "no answer within 60 s",
            "provider_code": "timeout",
            "stage": "provider",
        }
        return
    outcome = validate_extracted_output(adapter.extract_output(item, spec), spec)
    assert outcome.ok is (status == "success")
    assert outcome.value == value


def test_a_batch_s_state_and_an_unknown_batch(adapter, tmp_path):
    batch_id = batch_id_of(KEY, "f" * 64)
    with pytest.raises(BatchNotFoundError) as unknown:
        adapter.get_batch(batch_id)
    assert unknown.value.status_code == 404
    root = adapter.jobs.root(batch_id)
    root.mkdir(parents=True)
    (root / BATCH_FILE).write_text(json.dumps({"batch_id": batch_id, "identity": {}}))
    state = adapter.get_batch(batch_id)  # recorded, no runner alive, no status: it cannot finish
    assert (state.status, "ended without finishing" in (state.error_message or "")) == ("failed", True)
    (root / STATUS_FILE).write_text(
        json.dumps({"status": "completed", "counts": {"succeeded": 2, "errored": 1}})
    )
    state = adapter.get_batch(batch_id)
    assert state.status == "completed"
    assert state.counts == {"succeeded": 2, "errored": 1, "expired": 0, "cancelled": 0}


def test_a_prompt_the_worker_cannot_read_whole_and_a_partial_url_are_refused(adapter):
    spec = build_output_spec(str)
    with pytest.raises(LLMBatchLimitExceededError, match="request 1: its prompt takes"):
        adapter.validate_requests(
            [{"prompt": "short"}, {"prompt": "x" * 300_000}], model="m", output_spec=spec, idempotency_key=KEY
        )
    with pytest.raises(LLMBatchInputError, match="not valid Unicode"):
        adapter.validate_requests(
            [{"prompt": "a \ud800 b"}], model="m", output_spec=spec, idempotency_key=KEY
        )
    with pytest.raises(LLMBatchInputError, match="whole URL"):
        LLMEtlBatchAdapter(base_url="ollama:11434")


def test_a_result_line_that_names_no_request_is_left_for_common_ai_to_row_as_missing(tmp_path):
    shard = tmp_path / "shard-00000"
    shard.mkdir()
    (shard / "results.jsonl").write_text(
        json.dumps({"id": f"{KEY}-0", "enrichment": {"text": "hi"}, "meta": {"model": "m"}}) + "\n"
    )
    (shard / "dead_letter.jsonl").write_text(
        json.dumps({"id": None, "reason": "record_too_large", "detail": "over 262144 bytes"}) + "\n"
    )
    (read,) = list(read_results([shard]))
    assert (read.custom_id, read.usage) == (f"{KEY}-0", None)  # no token counts: no usage, not zeros
