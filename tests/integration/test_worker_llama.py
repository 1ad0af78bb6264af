"""The worker against the real llama.cpp server and the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from llm_etl_provider.contract.codes import ExitCode
from llm_etl_provider.worker.tasks import task_for
from tests.integration.conftest import BIN, SAMPLE, worker
from tests.integration.fake_ollama import FakeOllama


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def head(path: Path, n: int, dest: Path) -> Path:
    dest.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return dest


def common(tmp_path: Path, llm_url: str, *extra: str) -> list[str]:
    return [
        "--output", str(tmp_path / "results.jsonl"),
        "--dead-letter", str(tmp_path / "dead.jsonl"),
        "--llm-url", llm_url,
        "--model", "smollm2",
        "--summary", str(tmp_path / "summary.json"),
        *extra,
    ]  # fmt: skip


def test_sentiment_on_drug_reviews(tmp_path, llama_server):
    """Every record accounted for, results 100% schema-valid (the demo runs all 600 records the same way)."""
    sample = head(SAMPLE, 30, tmp_path / "in.jsonl")
    done = worker("--task", "sentiment", "--input", sample, "--template", "{review}",
                  "--heartbeat", tmp_path / "heartbeat", *common(tmp_path, llama_server.url))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "heartbeat").is_file()  # what the pod's liveness probe reads
    results, dead = read_jsonl(tmp_path / "results.jsonl"), read_jsonl(tmp_path / "dead.jsonl")
    input_ids = [json.loads(line)["id"] for line in sample.read_text().splitlines()]
    assert sorted([r["id"] for r in results] + [d["id"] for d in dead]) == sorted(input_ids)
    validator = Draft202012Validator(task_for("sentiment").schema)
    assert all(validator.is_valid(r["enrichment"]) for r in results)
    assert len(results) >= 29, f"{len(dead)} dead letters: {[d['reason'] for d in dead]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] == 30
    assert summary["records_per_s"] > 0
    assert "progress records=" in done.stderr
    print("\nsummary:", json.dumps(summary))


@pytest.mark.parametrize(
    ("task", "flags"),
    [
        ("tags", {"categories": ("effectiveness", "side effects", "dosage", "mental health", "pain")}),
        ("moderation", {}),
        ("entities", {"entity_types": ("drug", "condition", "symptom")}),
    ],
)
def test_catalogue_tasks_give_schema_valid_results(tmp_path, llama_server, task, flags):
    extra = [
        arg for name, values in flags.items() for arg in (f"--{name.replace('_', '-')}", ",".join(values))
    ]
    sample = head(SAMPLE, 4, tmp_path / "in.jsonl")
    # A 135M model sometimes rambles past max_tokens; that record is dead-lettered, never lost.
    done = worker("--task", task, "--input", sample, "--template", "Drug: {drug}\nReview: {review}", *extra,
                  "--max-dead-letter-ratio", "0.5", *common(tmp_path, llama_server.url))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results, dead = read_jsonl(tmp_path / "results.jsonl"), read_jsonl(tmp_path / "dead.jsonl")
    assert sorted(r["line"] for r in results + dead) == [1, 2, 3, 4]
    assert len(results) >= 2
    assert all(d["reason"] == "invalid_output" for d in dead)
    fields = set(task_for(task, **flags).schema["required"])
    assert all(r["task"] == task and set(r["enrichment"]) == fields for r in results)


def test_custom_task_on_csv_input(tmp_path, llama_server):
    csv_path = tmp_path / "in.csv"
    csv_path.write_text(
        'ref,note\n1,"Headache gone after two days of ibuprofen."\n2,"Nausea, could not sleep."\n'
    )
    schema = {
        "type": "object",
        "properties": {"mentions_sleep": {"type": "boolean"}, "severity": {"enum": ["mild", "severe"]}},
        "required": ["mentions_sleep", "severity"],
        "additionalProperties": False,
    }
    done = worker("--task", "custom", "--input", csv_path, "--id-field", "ref", "--template", "{note}",
                  "--system-prompt", "Read the patient note. Answer in JSON.", "--schema", json.dumps(schema),
                  *common(tmp_path, llama_server.url))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["id"] for r in results] == ["1", "2"]
    validator = Draft202012Validator(schema)
    assert all(validator.is_valid(r["enrichment"]) for r in results)


def test_ollama_api_through_a_fake_ollama_backed_by_the_real_model(tmp_path, llama_server):
    sample = head(SAMPLE, 5, tmp_path / "in.jsonl")
    with FakeOllama(llama_server.url) as ollama:
        done = worker("--task", "sentiment", "--input", sample, "--template", "{review}", "--api", "ollama",
                      *common(tmp_path, ollama.url))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 5
    assert all(r["format"]["required"] == ["sentiment"] for r in ollama.requests)
    assert all(r["stream"] is False and r["keep_alive"] == "10m" for r in ollama.requests)


@pytest.mark.parametrize(
    "seed", [2, 23, 29]
)  # killed after 7, 15 and 23 results: between checkpoints and on one
def test_sigkill_and_restart_redoes_at_most_one_checkpoint(tmp_path, llama_server, seed):
    sample = head(SAMPLE, 40, tmp_path / "in.jsonl")
    args = [
        str(BIN / "llm-etl-worker"), "--task", "sentiment", "--input", str(sample), "--template", "{review}",
        "--checkpoint", str(tmp_path / "ckpt.json"), "--checkpoint-every", "5",
        *common(tmp_path, llama_server.url),
    ]  # fmt: skip
    kill_at = random.Random(seed).randrange(6, 30)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= kill_at:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.stderr is not None
    process.stderr.close()
    checkpoint = json.loads((tmp_path / "ckpt.json").read_text())["state"]["records_done"]
    written_before_restart = results.read_bytes().count(b"\n")
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [r["id"] for r in read_jsonl(results)] + [d["id"] for d in read_jsonl(tmp_path / "dead.jsonl")]
    expected = [json.loads(line)["id"] for line in sample.read_text().splitlines()]
    assert sorted(ids) == sorted(expected)
    assert len(ids) == len(set(ids)) == 40
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] == checkpoint
    assert 0 <= written_before_restart - checkpoint <= 5  # what the restart cut back and redid


def test_sigterm_stops_at_once_and_checkpoints_every_record_written(tmp_path, llama_server):
    sample = head(SAMPLE, 12, tmp_path / "in.jsonl")
    args = [
        str(BIN / "llm-etl-worker"), "--task", "sentiment", "--input", str(sample), "--template", "{review}",
        "--checkpoint", str(tmp_path / "ckpt.json"), *common(tmp_path, llama_server.url),
    ]  # fmt: skip
    process = subprocess.Popen(
        [*args, "--progress-interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    seen: list[str] = []  # the results file is flushed at checkpoints: the progress lines say what is written
    while not re.search(r" results=([3-9]|1[01]) ", line := process.stderr.readline()):
        assert line, "".join(seen)[-3000:]
        seen.append(line)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stderr = "".join(seen) + process.communicate(timeout=30)[1]
    assert process.returncode == ExitCode.STOPPED, stderr[-3000:]
    assert time.monotonic() - stopped_at < 5  # requests in flight are dropped, not awaited
    assert "stopped by SIGTERM" in stderr
    results = tmp_path / "results.jsonl"
    written = len(read_jsonl(results))
    assert written >= 3
    # the default interval is 100 records: this checkpoint is the stop's own
    assert json.loads((tmp_path / "ckpt.json").read_text())["state"]["records_done"] == written
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == written
    ids = [r["id"] for r in read_jsonl(results)] + [d["id"] for d in read_jsonl(tmp_path / "dead.jsonl")]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in sample.read_text().splitlines())
    assert len(ids) == len(set(ids))


def test_exit_codes(tmp_path, llama_server):
    sample = head(SAMPLE, 3, tmp_path / "in.jsonl")
    unreachable = worker("--task", "sentiment", "--input", sample, "--ready-timeout", "1",
                         *common(tmp_path, "http://127.0.0.1:9"))  # fmt: skip
    assert unreachable.returncode == ExitCode.SERVER_UNAVAILABLE
    assert "was not ready after 1 s" in unreachable.stderr

    config = worker("--task", "custom", "--input", sample, *common(tmp_path, llama_server.url))
    assert config.returncode == ExitCode.CONFIGURATION
    assert "task 'custom' needs system_prompt (--system-prompt)" in config.stderr

    cut = worker("--task", "sentiment", "--input", sample, "--template", "{review}", "--max-tokens", "2",
                 "--max-attempts", "2", *common(tmp_path, llama_server.url))  # fmt: skip
    assert cut.returncode == ExitCode.DEAD_LETTER_THRESHOLD, cut.stderr[-2000:]
    assert [d["reason"] for d in read_jsonl(tmp_path / "dead.jsonl")] == ["invalid_output"] * 3
