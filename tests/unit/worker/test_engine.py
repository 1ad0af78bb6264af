from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
from pathlib import Path

import httpx
import pytest

from llm_etl_provider.contract.invocation import WorkerInvocation
from llm_etl_provider.contract.summary import MAX_SERIES_POINTS
from llm_etl_provider.formats.records import RecordReader
from llm_etl_provider.transport.exceptions import TrailerMismatchError
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.keys import new_key
from llm_etl_provider.worker.checkpoint import Checkpoint, run_fingerprint
from llm_etl_provider.worker.clients import make_client
from llm_etl_provider.worker.engine import Engine
from llm_etl_provider.worker.exceptions import (
    ConfigurationError,
    DeadLetterThresholdError,
    ServerUnavailableError,
)
from llm_etl_provider.worker.sinks import JsonlFileSink, LogFrameSink
from llm_etl_provider.worker.tasks import task_for
from tests.unit.worker.fakes import Crash, FakeLLMServer, crashing, worker_flags

# The prompt is the record's text alone: the fake server answers, and fails, by it
TEXT = "{text}"


def write_input(path: Path, n: int, extra: bytes = b"") -> Path:
    lines = [
        json.dumps({"id": f"r{i}", "text": f"{'bad' if i % 3 == 0 else 'good'} drug {i}"}) for i in range(n)
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n" + extra)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def run_engine(
    tmp_path: Path,
    server: FakeLLMServer,
    input_path: Path,
    *,
    settings: WorkerInvocation | None = None,
    checkpoint: bool = False,
    sink_cls=JsonlFileSink,
    task=None,
    beside=None,
):
    """Run the engine; ``beside``, a coroutine function, runs on the same loop meanwhile."""
    task = task or task_for("sentiment", template=TEXT)
    logs: list[str] = []

    async def go():
        running_beside = asyncio.create_task(beside()) if beside else None
        async with httpx.AsyncClient(transport=server.transport()) as http:
            engine = Engine(
                task,
                make_client(worker_flags(api=server.api), http),
                RecordReader(input_path),
                sink_cls(tmp_path / "results.jsonl", tmp_path / "dead.jsonl"),
                settings or worker_flags(max_attempts=3, progress_interval=0.01),
                checkpoint=Checkpoint(
                    tmp_path / "ckpt.json", run_fingerprint(input_path, task.fingerprint, "id")
                )
                if checkpoint
                else None,
                log=logs.append,
                sleep=no_sleep,
            )
            summary = await engine.run()
        if running_beside is not None:
            running_beside.cancel()
        return summary, engine

    summary, engine = asyncio.run(go())
    return summary, engine, logs


def test_every_record_is_written_once_in_input_order_with_metadata(tmp_path):
    server = FakeLLMServer(slots=3)
    input_path = write_input(tmp_path / "in.jsonl", 50)
    summary, engine, logs = run_engine(tmp_path, server, input_path)
    assert summary["input_sha256"] == hashlib.sha256(input_path.read_bytes()).hexdigest()
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["id"] for r in results] == [f"r{i}" for i in range(50)]
    assert results[0]["enrichment"] == {"sentiment": "negative"}
    assert results[1]["enrichment"] == {"sentiment": "positive"}
    assert results[1]["meta"]["model"] == "smollm2"
    assert results[1]["meta"]["prompt_tokens"] == 40
    assert results[1]["meta"]["attempts"] == 1
    assert (tmp_path / "dead.jsonl").read_text() == ""
    assert engine.limit.limit == 6  # twice llama.cpp's slot count
    assert (summary["concurrency"], summary["concurrency_source"]) == (6, "server slots")
    assert summary["records"] == summary["results"] == 50
    assert summary["prompt_tokens"] == 2000
    assert summary["cached_prompt_tokens"] == 1500
    assert summary["latency_p50_s"] is not None
    assert any(line.startswith("summary ") for line in logs)


def test_concurrency_is_bounded(tmp_path):
    server = FakeLLMServer(slots=None)
    in_flight = 0
    peak = 0
    original = server.handle

    async def slow_handle(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        return original(request)

    server.transport = lambda: httpx.MockTransport(slow_handle)  # type: ignore[method-assign]
    settings = worker_flags(concurrency=5, progress_interval=60)
    run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 60), settings=settings)
    assert peak == 5
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 60


def test_transient_faults_are_retried_and_counted(tmp_path):
    server = FakeLLMServer()
    server.faults["good drug 1"] += ["503", "reset"]
    server.faults["good drug 2"] += ["timeout", "not_json"]
    summary, _, _ = run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 5))
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["meta"]["attempts"] for r in results] == [1, 3, 3, 1, 1]
    assert summary["retries"] == 4


def test_records_that_keep_failing_go_to_the_dead_letters_with_reasons(tmp_path):
    server = FakeLLMServer()
    server.faults["good drug 1"] += ["500"] * 3
    server.faults["good drug 2"] += ["400"]
    server.faults["good drug 4"] += ["invalid"] * 3
    server.faults["good drug 5"] += ["cut"] * 3
    settings = worker_flags(max_attempts=3, max_dead_letter_ratio=1.0)
    summary, _, _ = run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 7), settings=settings)
    dead = {d["id"]: d for d in read_jsonl(tmp_path / "dead.jsonl")}
    assert {k: (v["reason"], v["attempts"]) for k, v in dead.items()} == {
        "r1": ("server_error", 3),
        "r2": ("llm_rejected", 1),  # a 4xx is never retried
        "r4": ("invalid_output", 3),
        "r5": ("invalid_output", 3),
    }
    assert "max_tokens" in dead["r5"]["detail"]
    assert dead["r1"]["record"] == {
        "id": "r1",
        "text": "good drug 1",
    }  # nothing lost: the input travels along
    assert [r["id"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["r0", "r3", "r6"]
    assert summary["dead_letter_reasons"] == {"invalid_output": 2, "llm_rejected": 1, "server_error": 1}


def test_a_retry_after_an_invalid_answer_raises_the_temperature(tmp_path):
    server = FakeLLMServer()
    server.faults["good drug 1"].append("invalid")
    run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 2))
    temperatures = [
        b["temperature"] for b in server.chat_bodies if b["messages"][1]["content"] == "good drug 1"
    ]
    assert temperatures == [0.0, 0.7]


def test_malformed_input_lines_are_dead_lettered_in_place(tmp_path):
    path = write_input(
        tmp_path / "in.jsonl", 3, extra=b'{"id": "x", "text": \n\n{"text": "no id"}\n{"id": "y"}\n'
    )
    settings = worker_flags(max_dead_letter_ratio=1.0)
    summary, _, _ = run_engine(tmp_path, FakeLLMServer(), path, settings=settings)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(d["line"], d["reason"]) for d in dead] == [
        (4, "malformed_json"),
        (6, "missing_id"),
        (7, "missing_field"),
    ]
    assert dead[0]["raw"] == '{"id": "x", "text": \n'
    assert summary["skipped_blank_lines"] == 1
    assert summary["records"] == 6


def test_too_many_dead_letters_fail_the_run_after_writing_everything(tmp_path):
    server = FakeLLMServer()
    for i in range(1, 10, 3):
        server.faults[f"good drug {i}"] += ["400"]
    settings = worker_flags(max_dead_letter_ratio=0.2)
    with pytest.raises(DeadLetterThresholdError, match=r"3 of 10 records .*30\.0% > 20\.0%.*llm_rejected=3"):
        run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 10), settings=settings)
    assert len(read_jsonl(tmp_path / "results.jsonl")) + len(read_jsonl(tmp_path / "dead.jsonl")) == 10


def test_a_server_that_goes_away_stops_the_run_instead_of_dead_lettering_everything(tmp_path):
    server = FakeLLMServer()
    original = server.handle
    calls = 0

    def handle(request):
        nonlocal calls
        if request.method == "POST":
            calls += 1
            if calls > 4:
                server.down = True
        return original(request)

    server.transport = lambda: httpx.MockTransport(handle)  # type: ignore[method-assign]
    settings = worker_flags(concurrency=1, max_attempts=2)
    with pytest.raises(ServerUnavailableError, match="stopped answering at input line 5"):
        run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 10), settings=settings)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 4
    assert read_jsonl(tmp_path / "dead.jsonl") == []


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_crash_and_restart_redoes_at_most_one_checkpoint_and_duplicates_nothing(tmp_path, seed):
    n, every = 97, 10
    path = write_input(tmp_path / "in.jsonl", n, extra=b"not json\n")
    crash_after = random.Random(seed).randrange(1, n)
    settings = worker_flags(checkpoint_every=every, max_dead_letter_ratio=1.0, concurrency=4)
    server = FakeLLMServer()
    with pytest.raises(Crash):
        run_engine(
            tmp_path, server, path, settings=settings, checkpoint=True,
            sink_cls=crashing(JsonlFileSink, crash_after, dead_letters_count=True),
        )  # fmt: skip
    calls_before = len(server.chat_bodies)
    summary, _, logs = run_engine(tmp_path, server, path, settings=settings, checkpoint=True)
    ids = [r["id"] for r in read_jsonl(tmp_path / "results.jsonl")] + [
        d["line"] for d in read_jsonl(tmp_path / "dead.jsonl")
    ]
    assert ids == [f"r{i}" for i in range(n)] + [n + 1]
    resumed = summary["resumed_from"]
    assert 0 <= crash_after - resumed < every  # redone: at most one checkpoint interval
    assert resumed == crash_after // every * every  # the last checkpoint before the crash
    assert any(f"resuming after {resumed} records" in line for line in logs) == (resumed > 0)
    assert len(server.chat_bodies) - calls_before == n - resumed
    assert summary["records"] == n + 1
    assert summary["results"] == n


class StoppingSink(JsonlFileSink):
    """Cancels the run after a number of writes, as the worker's SIGTERM handler does."""

    stop_after = 10**9
    writes = 0

    def write_result(self, line):
        type(self).writes += 1
        if type(self).writes == self.stop_after:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        super().write_result(line)


def test_a_stopped_run_checkpoints_what_it_wrote_and_a_restart_redoes_none_of_it(tmp_path):
    n = 37
    path = write_input(tmp_path / "in.jsonl", n)
    StoppingSink.writes, StoppingSink.stop_after = 0, 11
    settings = worker_flags(checkpoint_every=100, concurrency=4)  # no regular checkpoint before the stop
    server = FakeLLMServer()
    with pytest.raises(asyncio.CancelledError):
        run_engine(tmp_path, server, path, settings=settings, checkpoint=True, sink_cls=StoppingSink)
    written = len(read_jsonl(tmp_path / "results.jsonl"))
    assert written >= 11
    calls_before = len(server.chat_bodies)
    StoppingSink.stop_after = 0
    summary, _, _ = run_engine(
        tmp_path, server, path, settings=settings, checkpoint=True, sink_cls=StoppingSink
    )
    assert summary["resumed_from"] == written  # every record written before the stop is kept
    assert len(server.chat_bodies) - calls_before == n - written
    assert [r["id"] for r in read_jsonl(tmp_path / "results.jsonl")] == [f"r{i}" for i in range(n)]


def test_a_finished_run_restarted_with_its_checkpoint_does_nothing(tmp_path):
    path = write_input(tmp_path / "in.jsonl", 12)
    server = FakeLLMServer()
    run_engine(tmp_path, server, path, checkpoint=True)
    before = (tmp_path / "results.jsonl").read_bytes()
    calls = len(server.chat_bodies)
    summary, _, _ = run_engine(tmp_path, server, path, checkpoint=True)
    assert (tmp_path / "results.jsonl").read_bytes() == before
    assert len(server.chat_bodies) == calls
    assert summary["results"] == 12


def test_a_checkpoint_of_another_input_is_refused(tmp_path):
    run_engine(tmp_path, FakeLLMServer(), write_input(tmp_path / "in.jsonl", 4), checkpoint=True)
    with pytest.raises(ConfigurationError, match="belongs to another input"):
        run_engine(tmp_path, FakeLLMServer(), write_input(tmp_path / "in.jsonl", 5), checkpoint=True)


def test_ollama_api_end_to_end(tmp_path):
    summary, _, _ = run_engine(
        tmp_path, FakeLLMServer("ollama", models=("smollm2:latest",)), write_input(tmp_path / "in.jsonl", 6)
    )
    assert summary["results"] == 6
    assert summary["completion_tokens"] == 42


def test_progress_lines_carry_counts_never_content(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": f"CANARY-{i} good"}) + "\n" for i in range(30))
    )
    server = FakeLLMServer()
    original = server.handle

    async def slow(request):
        await asyncio.sleep(0.003)
        return original(request)

    server.transport = lambda: httpx.MockTransport(slow)  # type: ignore[method-assign]
    _, _, logs = run_engine(tmp_path, server, path)
    progress = [line for line in logs if line.startswith("progress ")]
    assert progress
    assert "records=30/30 (100.0%)" in progress[-1]
    assert not any("CANARY" in line for line in logs)


def run_log_engine(tmp_path, server, input_path, out, *, key, crash_after=None, checkpoint=True, attempt=1):
    task = task_for("sentiment", template=TEXT)
    Sink = crashing(LogFrameSink, crash_after) if crash_after is not None else LogFrameSink

    async def go():
        async with httpx.AsyncClient(transport=server.transport()) as http:
            engine = Engine(
                task,
                make_client(worker_flags(), http),
                RecordReader(input_path),
                Sink(key, "run-9", 1, attempt, out, spool_path=tmp_path / "frames.spool"),
                worker_flags(checkpoint_every=7, concurrency=3),
                checkpoint=Checkpoint(
                    tmp_path / "ckpt.json", run_fingerprint(input_path, task.fingerprint, "id")
                )
                if checkpoint
                else None,
                log=lambda _: None,
                sleep=no_sleep,
            )
            return await engine.run()

    return asyncio.run(go())


def test_log_output_is_sealed_and_extracts_to_every_record(tmp_path):
    key = new_key()
    out = io.BytesIO()
    summary = run_log_engine(tmp_path, FakeLLMServer(), write_input(tmp_path / "in.jsonl", 30), out, key=key)
    assert b"good drug" not in out.getvalue()
    manifest = extract(io.BytesIO(out.getvalue()), key, tmp_path / "published", run_id="run-9", shard=1)
    assert manifest["results"] == summary["results"] == 30
    assert manifest["task"] == "sentiment"
    ids = [
        json.loads(line)["id"] for line in (tmp_path / "published" / "results.jsonl").read_text().splitlines()
    ]
    assert ids == [f"r{i}" for i in range(30)]


@pytest.mark.parametrize("crash_after", [3, 15, 29])
def test_a_restarted_log_worker_replays_its_spool_so_the_new_log_alone_is_complete(tmp_path, crash_after):
    key = new_key()
    path = write_input(tmp_path / "in.jsonl", 30)
    server = FakeLLMServer()
    with pytest.raises(Crash):
        run_log_engine(tmp_path, server, path, io.BytesIO(), key=key, crash_after=crash_after)
    calls = len(server.chat_bodies)
    second_container_log = io.BytesIO()
    summary = run_log_engine(tmp_path, server, path, second_container_log, key=key, attempt=2)
    resumed = crash_after // 7 * 7
    assert summary["resumed_from"] == resumed
    assert len(server.chat_bodies) - calls == 30 - resumed
    # the replayed frames of try 1 and the new ones of try 2: one stream, sealed by try 2
    log = second_container_log.getvalue()
    with pytest.raises(TrailerMismatchError, match="sealed by try 2"):
        extract(io.BytesIO(log), key, tmp_path / "published", expected_attempt=1)
    manifest = extract(io.BytesIO(log), key, tmp_path / "published", expected_attempt=2)
    assert (manifest["results"], manifest["attempt"]) == (30, 2)
    ids = [
        json.loads(line)["id"] for line in (tmp_path / "published" / "results.jsonl").read_text().splitlines()
    ]
    assert ids == [f"r{i}" for i in range(30)]


def test_a_server_that_does_not_say_its_slots_is_probed(tmp_path):
    """vLLM, Ollama, SGLang and MAX publish no slot count: the engine raises the requests in flight while
    throughput grows, and reports the levels it tried."""
    server = FakeLLMServer(slots=None)
    original = server.handle
    in_flight = 0

    async def batching_handle(request):
        # a server of 16 sequences: each request takes longer once more than 16 are in flight
        nonlocal in_flight
        in_flight += 1
        await asyncio.sleep(0.05 * max(1, in_flight / 16))
        in_flight -= 1
        return original(request)

    server.transport = lambda: httpx.MockTransport(batching_handle)  # type: ignore[method-assign]
    settings = worker_flags(progress_interval=60)
    summary, _, _ = run_engine(tmp_path, server, write_input(tmp_path / "in.jsonl", 600), settings=settings)
    assert summary["concurrency_source"] == "probe"
    assert summary["concurrency_levels"][:2] == [8, 16]
    assert summary["concurrency"] in (16, 32)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 600


def test_only_server_failures_wait_before_a_retry(tmp_path):
    """A transient failure backs off; an invalid answer is asked again at once (waiting would only leave a
    server slot idle: the retry differs by its temperature, not by the server's state)."""
    server = FakeLLMServer(slots=2)
    server.faults["x r0"] = ["503"]
    server.faults["x r1"] = ["invalid"]
    waits: list[float] = []

    async def record_wait(seconds: float) -> None:
        waits.append(seconds)

    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "r0", "text": "x r0"}\n{"id": "r1", "text": "x r1"}\n')

    async def go() -> None:
        async with httpx.AsyncClient(transport=server.transport()) as http:
            await Engine(
                task_for("sentiment", template=TEXT),
                make_client(worker_flags(), http),
                RecordReader(path),
                JsonlFileSink(tmp_path / "r.jsonl", tmp_path / "d.jsonl"),
                worker_flags(progress_interval=60),
                log=lambda line: None,
                sleep=record_wait,
            ).run()

    asyncio.run(go())
    assert len(waits) == 1  # the 503's retry only
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 2


def test_a_slow_store_call_blocks_neither_the_requests_nor_the_heartbeat(tmp_path):
    """The object sink's PUTs (retried with sleeps, up to minutes) ran on the event loop: requests, progress
    and the heartbeat stopped meanwhile, and the liveness probe killed a healthy worker on a slow store."""
    import time

    input_path = write_input(tmp_path / "in.jsonl", 20)
    server = FakeLLMServer()
    beats = [0]
    loop_ran: list[int] = []

    class SlowStoreSink(JsonlFileSink):
        def position(self):  # what a checkpoint records: with the object sink, a part's PUT first
            before = beats[0]
            time.sleep(0.3)
            loop_ran.append(beats[0] - before)
            return super().position()

        def finish(self, summary):
            before = beats[0]
            time.sleep(0.3)
            loop_ran.append(beats[0] - before)
            super().finish(summary)

    async def beat():
        while True:
            beats[0] += 1
            await asyncio.sleep(0.01)

    settings = worker_flags(checkpoint_every=10, progress_interval=0.01)
    summary, _, _ = run_engine(
        tmp_path, server, input_path, settings=settings, checkpoint=True, sink_cls=SlowStoreSink, beside=beat
    )
    assert summary["records"] == 20
    assert len(loop_ran) >= 3  # the checkpoints (each records the sink's position) and the trailer
    assert all(ran >= 10 for ran in loop_ran), loop_ran  # the loop went on through every slow call


def test_the_input_s_own_label_goes_into_each_result_s_meta_as_text(tmp_path):
    """``--label-field``: the run's report compares the model's label with it; a record without one gets
    null, and a value that is not text is written as JSON spells it."""
    rows = [
        {"id": "a", "text": "good drug", "rating_label": "positive"},
        {"id": "b", "text": "bad drug", "rating_label": True},
        {"id": "c", "text": "bad drug", "rating_label": 3},
        {"id": "d", "text": "good drug"},
    ]
    input_path = tmp_path / "in.jsonl"
    input_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = worker_flags(label_field="rating_label", progress_interval=60)
    summary, _, _ = run_engine(tmp_path, FakeLLMServer(), input_path, settings=settings)
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["meta"]["label"] for r in results] == ["positive", "true", "3", None]
    assert summary["label_field"] == "rating_label"
    # without the setting nothing is copied, and the summary names no field
    summary, _, _ = run_engine(
        tmp_path, FakeLLMServer(), input_path, settings=worker_flags(progress_interval=60)
    )
    assert all("label" not in r["meta"] for r in read_jsonl(tmp_path / "results.jsonl"))
    assert "label_field" not in summary


def test_the_summary_carries_the_schema_s_labels_and_the_progress_series(tmp_path):
    """What the run's report draws: the labels it may count (the task's enums, never free text) and the
    records done over time (bounded: tests/unit/contract/test_summary.py)."""
    input_path = write_input(tmp_path / "in.jsonl", 40)
    summary, _, _ = run_engine(
        tmp_path, FakeLLMServer(), input_path, settings=worker_flags(progress_interval=60)
    )
    assert summary["output_labels"] == [["sentiment", "one", ["positive", "negative", "neutral"]]]
    series = summary["progress_series"]
    assert 2 <= len(series) <= MAX_SERIES_POINTS
    assert series[0][1] == 0  # from the first record
    assert series[-1][1] == 40  # to the run's end
    assert abs(series[-1][0] - summary["elapsed_s"]) <= 0.1
    assert series == sorted(series)


def test_a_free_text_task_keeps_each_answer_whole_with_its_finish_reason(tmp_path):
    server = FakeLLMServer(slots=2)
    input_path = write_input(tmp_path / "in.jsonl", 4)
    run_engine(tmp_path, server, input_path, task=task_for("custom", template=TEXT, system_prompt="Say."))
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["id"] for r in results] == ["r0", "r1", "r2", "r3"]
    assert all(set(r["enrichment"]) == {"text"} and r["enrichment"]["text"] for r in results)
    assert all(r["meta"]["finish_reason"] == "stop" for r in results)
    assert all("response_format" not in body for body in server.chat_bodies)  # unconstrained


def test_carried_input_fields_go_into_each_result_beside_its_enrichment(tmp_path):
    """``--carry-fields``: the named fields (null where a record lacks one), or ``*`` for the whole record;
    dead letters keep their whole record as before."""
    rows = [
        {"id": "a", "text": "good drug", "drug": "x", "rating": 9},
        {"id": "b", "text": "bad drug", "rating": 1},
    ]
    input_path = tmp_path / "in.jsonl"
    input_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = worker_flags(carry_fields=("drug", "rating"), progress_interval=60)
    run_engine(tmp_path, FakeLLMServer(), input_path, settings=settings)
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["input"] for r in results] == [{"drug": "x", "rating": 9}, {"drug": None, "rating": 1}]
    run_engine(tmp_path, FakeLLMServer(), input_path, settings=worker_flags(carry_fields=("*",)))
    assert [r["input"] for r in read_jsonl(tmp_path / "results.jsonl")] == rows
    run_engine(tmp_path, FakeLLMServer(), input_path, settings=worker_flags())
    assert all("input" not in r for r in read_jsonl(tmp_path / "results.jsonl"))


def test_each_result_names_its_provenance_and_the_summary_holds_it_whole(tmp_path):
    """The model, its digest, the server's version, the prompts' and schema's digests and the sampling: a
    change of any shows in every result's id; no prompt text is in it."""
    input_path = write_input(tmp_path / "in.jsonl", 3)
    digest = "sha256:" + "b" * 64
    summary, _, _ = run_engine(
        tmp_path, FakeLLMServer(), input_path, settings=worker_flags(model_digest=digest)
    )
    made = summary["provenance"]
    assert made["model_digest"] == digest
    assert made["server"] == {"api": "openai", "version": "b6700-fake"}
    assert made["task"] == "sentiment"
    assert made["sampling"]["temperature"] == 0.0
    assert len(made["prompt_sha256"]) == len(made["schema_sha256"]) == 64
    assert "drug" not in json.dumps(made)  # digests of the prompts, never their text
    ids = {r["meta"]["provenance"] for r in read_jsonl(tmp_path / "results.jsonl")}
    assert len(ids) == 1
    warmer, _, _ = run_engine(
        tmp_path, FakeLLMServer(), input_path, settings=worker_flags(model_digest=digest, temperature=0.3)
    )
    assert warmer["provenance"]["sampling"]["temperature"] == 0.3
    assert {r["meta"]["provenance"] for r in read_jsonl(tmp_path / "results.jsonl")}.isdisjoint(ids)
    other, _, _ = run_engine(
        tmp_path, FakeLLMServer(), input_path, task=task_for("sentiment", template="{id}")
    )
    assert other["provenance"]["prompt_sha256"] != made["prompt_sha256"]
    assert other["provenance"]["model_digest"] is None  # not given: unknown, not guessed


def test_an_earlier_result_is_published_in_place_of_a_request_only_while_its_content_is_unchanged(tmp_path):
    """An incremental run: the stage's reused file gives earlier results by line; each is published (marked
    reused, its id and line this input's) where its content digest is the one computed now, else the record
    goes to the model."""
    input_path = write_input(tmp_path / "in.jsonl", 4)
    server = FakeLLMServer()
    run_engine(tmp_path, server, input_path, settings=worker_flags(carry_fields=("text",)))
    first = read_jsonl(tmp_path / "results.jsonl")
    assert all(len(r["meta"]["content_sha256"]) == 64 for r in first)
    earlier = {r["line"]: {**r, "enrichment": {"sentiment": "neutral"}} for r in first[:3]}
    earlier[3]["meta"] = {**earlier[3]["meta"], "content_sha256": "0" * 64}  # made otherwise
    again = FakeLLMServer()

    async def go() -> dict:
        async with httpx.AsyncClient(transport=again.transport()) as http:
            engine = Engine(
                task_for("sentiment", template=TEXT), make_client(worker_flags(api=again.api), http),
                RecordReader(input_path), JsonlFileSink(tmp_path / "again.jsonl", tmp_path / "dead.jsonl"),
                worker_flags(carry_fields=("text",), progress_interval=60), log=lambda _: None,
                sleep=no_sleep, reused=earlier,
            )  # fmt: skip
            return await engine.run()

    summary = asyncio.run(go())
    results = read_jsonl(tmp_path / "again.jsonl")
    assert [r["meta"].get("reused", False) for r in results] == [True, True, False, False]
    assert [r["enrichment"]["sentiment"] for r in results[:2]] == ["neutral", "neutral"]  # the earlier ones
    assert results[0]["input"] == first[0]["input"]  # carried from this input
    assert len(again.chat_bodies) == 2  # lines 3 (made otherwise) and 4 (no earlier result) only
    assert summary["reused"] == 2
    assert summary["results"] == 4
