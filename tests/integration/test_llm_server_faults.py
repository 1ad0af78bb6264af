"""LLM server faults, injected by a proxy in front of the real llama-server: retried within bounds, then
dead-lettered with a reason; the run completes and every record is accounted for exactly once."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from llm_etl_provider.worker.tasks import task_for
from tests.integration.conftest import SAMPLE, worker
from tests.integration.fault_proxy import FAULTS, FaultProxy
from tests.integration.test_worker_llama import common, head, read_jsonl

MAX_ATTEMPTS = 4
TRANSIENT_REASONS = {"server_error", "timeout", "connection_error", "bad_response", "invalid_output"}


@pytest.mark.parametrize("seed", [7, 8])
def test_faults_are_retried_within_bounds_then_dead_lettered(tmp_path, llama_server, seed):
    sample = head(SAMPLE, 14, tmp_path / "in.jsonl")
    records = [json.loads(line) for line in sample.read_text().splitlines()]
    doomed = records[3]  # this record's every attempt gets HTTP 500
    with FaultProxy(
        llama_server.url, rate=0.4, seed=seed, stall_seconds=24, always={doomed["review"]: "error_500"}
    ) as proxy:
        # The timeout leaves a real answer time on 2 loaded cores (a tighter one times out real answers, and
        # the server keeps working on what its clients gave up on); the stall outlasts it.
        done = worker(
            "--task", "sentiment", "--input", sample, "--template", "{review}", "--concurrency", "4",
            "--request-timeout", "20", "--max-attempts", str(MAX_ATTEMPTS), "--max-dead-letter-ratio", "1",
            *common(tmp_path, proxy.url),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    results, dead = read_jsonl(tmp_path / "results.jsonl"), read_jsonl(tmp_path / "dead.jsonl")
    assert sorted(r["id"] for r in results + dead) == sorted(r["id"] for r in records)  # each once
    validator = Draft202012Validator(task_for("sentiment").schema)
    assert all(validator.is_valid(r["enrichment"]) for r in results)  # no fault slipped into a result

    attempts = proxy.attempts()
    assert max(attempts.values()) <= MAX_ATTEMPTS  # retried within bounds
    assert proxy.attempts_for(doomed["review"]) == MAX_ATTEMPTS
    (doomed_letter,) = [d for d in dead if d["id"] == doomed["id"]]
    assert doomed_letter["reason"] == "server_error"
    assert doomed_letter["attempts"] == MAX_ATTEMPTS
    assert {d["reason"] for d in dead} <= TRANSIENT_REASONS
    assert set(proxy.injected()) == set(FAULTS)  # the run met every kind of fault
    review = {r["id"]: r["review"] for r in records}
    for result in results:  # every fault was followed by a retry; the count is what the server saw
        text = review[result["id"]]
        assert result["meta"]["attempts"] == proxy.attempts_for(text) >= 1 + proxy.faults_for(text), result
    for letter in dead:  # given up only after the last attempt (a slow real answer may time out too)
        assert letter["attempts"] == proxy.attempts_for(review[letter["id"]]) == MAX_ATTEMPTS, letter
    assert any(r["meta"]["attempts"] > 1 for r in results)  # faults were survived, not only dead-lettered
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] == len(records)
    assert summary["results"] + summary["dead_letters"] == len(records)
