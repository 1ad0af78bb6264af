"""The ``llm-etl`` batch adapter with common.ai's own operator, against the real llama-server.

common.ai 1.0.0's ``LLMBatchOperator`` finds the adapter through its entry point, submits, polls and lands
its rows; the batch runs as the provider's job (a detached runner: the worker, the sealed log, the verified
extraction) in local execution.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from airflow.providers.common.ai.batch import dispatch
from airflow.providers.common.ai.batch.output_schema import build_output_spec
from airflow.providers.common.ai.operators.llm_batch import LLMBatchOperator
from pydantic import BaseModel

from llm_etl_provider.batch.adapter import LLMEtlBatchAdapter
from llm_etl_provider.batch.job import BatchNotFoundError, LocalBatchJobs
from llm_etl_provider.config import env_var

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "drug_reviews_sample.jsonl"
CANARY = "CANARY-7f3a"  # a prompt's text, looked for in everything but the rows
# common.ai's row, whatever its status
ROW_FIELDS = {
    "custom_id",
    "index",
    "status",
    "output",
    "raw_output",
    "error",
    "model",
    "usage",
    "finish_reason",
}


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]


def reviews(count: int) -> list[str]:
    lines = SAMPLE.read_text().splitlines()[:count]
    return [f"{json.loads(line)['review'][:600]} {CANARY}" for line in lines]


@pytest.fixture
def deployment(tmp_path, monkeypatch, llama_server):
    """Local execution under ``tmp_path``, and an ``llm_etl`` connection to the session's llama-server."""
    monkeypatch.setenv(env_var("execution_mode"), "local")
    monkeypatch.setenv(env_var("local_dir"), str(tmp_path / "staging"))
    connection = {"conn_type": "llm_etl", "host": llama_server.url}
    monkeypatch.setenv("AIRFLOW_CONN_LLM_ETL_BATCH", json.dumps(connection))
    return tmp_path


def deployment_server() -> str:
    """The connection's host, as common.ai hands it to an adapter it builds."""
    return str(json.loads(os.environ["AIRFLOW_CONN_LLM_ETL_BATCH"])["host"])


def context(run_id: str = "manual__2026-12-07T00:00:00+00:00") -> Any:
    """What LLMBatchOperator reads of its task's context: its task instance's identity."""
    ti = SimpleNamespace(dag_id="batch", task_id="classify", run_id=run_id, map_index=-1)
    return {"task_instance": ti, "ti": ti}


def operator(results: Path, prompts: list[str], **kwargs: Any) -> LLMBatchOperator:
    op = LLMBatchOperator(
        task_id="classify",
        requests=prompts,
        result_path=str(results),
        llm_conn_id="llm_etl_batch",
        model_id="llm-etl:smollm2",
        deferrable=False,
        do_xcom_push=False,
        **{"system_prompt": "Classify the sentiment of the drug review.", "max_tokens": 32, **kwargs},
    )
    op.poll_interval = 1  # the operator refuses less than 30 s; a 4-slot CPU server answers in seconds
    return op


def local_jobs(adapter: LLMEtlBatchAdapter) -> LocalBatchJobs:
    """The adapter's batches, in local execution."""
    assert isinstance(adapter.jobs, LocalBatchJobs)
    return adapter.jobs


def rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(manifest["result_uri"]).read_text().splitlines()]


def test_the_entry_point_gives_common_ai_this_adapter_for_llm_etl_connections():
    assert dispatch.get_adapter_class("llm_etl", "llm-etl:smollm2") is LLMEtlBatchAdapter
    with pytest.raises(Exception, match="does not support connection type 'pydanticai'"):
        dispatch.get_adapter_class("pydanticai", "llm-etl:smollm2")


def test_structured_answers_land_as_common_ai_rows_and_nothing_of_a_prompt_elsewhere(deployment, capfd):
    prompts = reviews(6)
    manifest = operator(deployment / "results", prompts, output_type=Sentiment).execute(context())
    landed = rows(manifest)
    assert sorted(row["index"] for row in landed) == list(range(6))
    assert all(set(row) == ROW_FIELDS for row in landed)
    succeeded = [row for row in landed if row["status"] == "success"]
    assert len(succeeded) >= 4, landed  # a 135M model may break a schema; that is an invalid_output row
    assert all(row["output"]["sentiment"] in ("positive", "negative", "neutral") for row in succeeded)
    assert all(row["usage"]["input_tokens"] > 0 and row["usage"]["output_tokens"] > 0 for row in succeeded)
    assert all(row["finish_reason"] == "stop" for row in succeeded)
    assert {row["status"] for row in landed} <= {"success", "invalid_output"}
    assert manifest["counts"]["succeeded"] == len(succeeded)
    # the prompts reach the model and nothing else: not the task's log, the runner's log, or the errors
    logs = "".join(capfd.readouterr())
    staged = "".join(p.read_text(errors="replace") for p in (deployment / "staging").rglob("runner.log"))
    assert CANARY not in logs + staged + json.dumps(manifest)
    assert CANARY not in json.dumps([row["error"] for row in landed])


def test_free_text_answers_when_the_output_type_is_str(deployment):
    prompts = ["Name one colour of the sky.", "Say hello in French.", "Write a long story about a cat."]
    op = operator(deployment / "results", prompts, system_prompt="Answer briefly.", max_tokens=24)
    landed = sorted(rows(op.execute(context())), key=lambda row: row["index"])
    assert [row["status"] for row in landed] == ["success"] * 3
    assert all(isinstance(row["output"], str) and row["output"].strip() for row in landed)
    # an answer cut at max_tokens is still the answer, and its finish reason says it was cut
    assert landed[2]["finish_reason"] == "length"
    assert landed[2]["usage"]["output_tokens"] == 24


def test_a_retried_task_re_attaches_to_its_batch_and_submits_nothing_new(deployment):
    prompts = reviews(3)
    first = operator(deployment / "results", prompts, output_type=Sentiment).execute(context())
    batches = list((deployment / "staging").glob("llm-etl-*"))
    assert len(batches) == 1
    runner = json.loads((batches[0] / "runner.json").read_text())
    again = operator(deployment / "results", prompts, output_type=Sentiment).execute(context())
    assert again["batch_id"] == first["batch_id"]
    assert list((deployment / "staging").glob("llm-etl-*")) == batches
    assert json.loads((batches[0] / "runner.json").read_text()) == runner  # no second runner
    assert rows(again) == rows(first)
    # another input under the same task makes another batch
    other = operator(deployment / "results", reviews(2), output_type=Sentiment).execute(context())
    assert other["batch_id"] != first["batch_id"]


def test_a_cancelled_batch_stops_its_runner_and_leaves_no_files(deployment):
    adapter = LLMEtlBatchAdapter(base_url=deployment_server())
    spec = build_output_spec(Sentiment)
    batch_id = adapter.submit(
        [{"prompt": p} for p in reviews(40)], model="smollm2", idempotency_key="0123456789abcdef",
        input_fingerprint="f" * 64, output_spec=spec, system_prompt="Classify.", max_tokens=32,
    ).batch_id  # fmt: skip
    assert adapter.get_batch(batch_id).status == "in_progress"
    root = local_jobs(adapter).root(batch_id)
    pid = json.loads((root / "runner.json").read_text())["pid"]
    adapter.cancel_batch(batch_id)
    assert not root.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    with pytest.raises(BatchNotFoundError) as unknown:
        adapter.get_batch(batch_id)
    assert unknown.value.status_code == 404  # common.ai then submits the batch again


def test_an_orphaned_submission_is_found_by_its_key_and_fingerprint_only(deployment):
    adapter = LLMEtlBatchAdapter(base_url=deployment_server())
    spec = build_output_spec(str)
    before = time.time()
    batch_id = adapter.submit(
        [{"prompt": "Say yes."}], model="smollm2", idempotency_key="00000000aaaaaaaa",
        input_fingerprint="a" * 64, output_spec=spec, system_prompt="", max_tokens=8,
    ).batch_id  # fmt: skip
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(before))
    assert adapter.find_orphaned_batch("00000000aaaaaaaa", "a" * 64, since) == batch_id
    assert adapter.find_orphaned_batch("00000000aaaaaaaa", "b" * 64, since) is None  # another input
    assert adapter.find_orphaned_batch("00000000bbbbbbbb", "a" * 64, since) is None  # another task
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(before + 3600))
    assert adapter.find_orphaned_batch("00000000aaaaaaaa", "a" * 64, later) is None  # an older submission
    adapter.cancel_batch(batch_id)


def test_a_batch_whose_runner_died_is_failed_and_its_retry_runs_it_afresh(deployment):
    """A runner killed outright (SIGKILL, a restarted machine) leaves no status: the batch is failed, as
    common.ai reads it (it then clears its state and submits again), and the new submission runs anew."""
    adapter = LLMEtlBatchAdapter(base_url=deployment_server())
    spec = build_output_spec(Sentiment)
    submit = functools.partial(
        adapter.submit, [{"prompt": p} for p in reviews(30)], model="smollm2",
        idempotency_key="1111111122222222", input_fingerprint="c" * 64, output_spec=spec,
        system_prompt="Classify.", max_tokens=32,
    )  # fmt: skip
    batch_id = submit().batch_id
    root = local_jobs(adapter).root(batch_id)
    runner = json.loads((root / "runner.json").read_text())
    os.killpg(runner["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while adapter.get_batch(batch_id).status == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.2)
    failed = adapter.get_batch(batch_id)
    assert failed.status == "failed"
    assert "ended without finishing" in (failed.error_message or "")
    assert submit().batch_id == batch_id  # the same task and input: the same id, a new runner
    assert json.loads((root / "runner.json").read_text())["pid"] != runner["pid"]
    while adapter.get_batch(batch_id).status == "in_progress" and time.monotonic() < deadline + 300:
        time.sleep(0.5)
    assert adapter.get_batch(batch_id).status == "completed"
    assert len(list(adapter.iter_results(batch_id))) == 30
    adapter.cancel_batch(batch_id)


def test_a_poller_that_cannot_see_the_runner_s_process_goes_by_its_heartbeat_and_cancels_through_its_folder(
    deployment,
):
    """The triggerer in a container of its own shares the batch's folder, not its processes: the runner's
    heartbeat says it runs, and a cancel file stops it."""
    adapter = LLMEtlBatchAdapter(base_url=deployment_server())
    batch_id = adapter.submit(
        [{"prompt": p} for p in reviews(40)], model="smollm2", idempotency_key="3333333344444444",
        input_fingerprint="d" * 64, output_spec=build_output_spec(Sentiment), system_prompt="Classify.",
        max_tokens=32,
    ).batch_id  # fmt: skip
    root = local_jobs(adapter).root(batch_id)
    runner = json.loads((root / "runner.json").read_text())
    (root / "runner.json").write_text(json.dumps({**runner, "host": "another-machine:pid:[1]"}))
    assert adapter.get_batch(batch_id).status == "in_progress"  # by its heartbeat
    adapter.cancel_batch(batch_id)  # by the cancel file its heartbeat reads
    assert not root.exists()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{runner['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{runner['pid']}").exists()
