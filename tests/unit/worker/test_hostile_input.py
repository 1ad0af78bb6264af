"""Hostile input: every line accounted for, no exception escapes, nothing hangs, no value leaks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_etl_provider.formats import strict_json
from llm_etl_provider.formats.exceptions import InputError
from llm_etl_provider.formats.records import RecordReader
from llm_etl_provider.worker import cli
from llm_etl_provider.worker.clients import make_client
from llm_etl_provider.worker.engine import Engine
from llm_etl_provider.worker.exceptions import InvalidOutputError
from llm_etl_provider.worker.sinks import JsonlFileSink, dump_line
from llm_etl_provider.worker.tasks import task_for
from tests.unit.worker.fakes import FakeLLMServer, worker_flags

CANARY = "CANARY-7f3a"


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ('{"id": 1, "n": NaN}', "NaN is not JSON"),
        ('{"id": 1, "n": -Infinity}', "-Infinity is not JSON"),
        ('{"id": 1, "n": 1e999}', "beyond a double's range"),
        ('{"id": 1, "n": ' + "9" * 5000 + "}", "cannot hold (ValueError)"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
        ('{"id": 1, "text": "\\ud800 ' + CANARY + '"}', "lone surrogate"),
        ('{"id": 1, "id": 2}', "repeats a key"),
        ('{"id": 1} ' + CANARY, "Extra data at column 11"),
    ],
)
def test_json_the_worker_cannot_take_is_a_dead_letter_that_names_no_value(tmp_path, line, detail):
    path = tmp_path / "in.jsonl"
    path.write_text(line + '\n{"id": 2, "text": "fine"}\n')
    first, second = RecordReader(path)
    assert (first.error, second.error) == ("malformed_json", None)
    assert detail in first.detail
    assert CANARY not in first.detail
    assert dump_line({"raw": first.raw}).endswith(b"\n")  # the dead letter itself is writable


def test_nul_characters_are_data_and_written_as_strict_json(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "text": "a\\u0000b"}\n')
    (record,) = RecordReader(path)
    assert record.fields == {"id": 1, "text": "a\x00b"}
    assert json.loads(dump_line(record.fields)) == record.fields


def test_nothing_that_is_not_strict_json_is_written():
    with pytest.raises(ValueError, match="Out of range float"):
        dump_line({"x": float("nan")})


@pytest.mark.parametrize(
    "answer", ['{"sentiment": NaN}', '{"sentiment": "positive", "sentiment": "negative"}']
)
def test_an_answer_that_is_not_strict_json_is_invalid_output(answer):
    with pytest.raises(InvalidOutputError, match="not JSON"):
        task_for("sentiment").parse(answer, {})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400).filter(lambda data: not data.startswith(b"\x1f\x8b")))  # not gzip
def test_any_bytes_read_as_jsonl_give_a_record_or_a_counted_blank_for_every_line(data):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl"
        path.write_bytes(data)
        reader = RecordReader(path, max_record_bytes=64)
        records = list(reader)
        for record in records:
            if record.fields is not None:
                dump_line(record.fields)  # what would be written is strict JSON
        physical = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        assert len(records) + reader.stats.blank_lines == physical
        assert len({r.line for r in records}) == len(records)


def test_a_csv_header_that_repeats_a_name_is_refused_without_naming_it(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(f"{CANARY},{CANARY}\n1,2\n")
    with pytest.raises(InputError, match="names columns 1 and 2 alike") as info:
        list(RecordReader(path))
    assert CANARY not in str(info.value)


class FailingReader(RecordReader):
    """Reads three records, then fails as a reader bug would."""

    def __iter__(self):
        for count, record in enumerate(super().__iter__()):
            if count == 3:
                raise RuntimeError(CANARY)
            yield record


def test_a_reader_that_dies_ends_the_run_at_once_with_what_was_written_checkpointed(tmp_path):
    from llm_etl_provider.worker.checkpoint import Checkpoint

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": "good"}) + "\n" for i in range(10)))
    server = FakeLLMServer()
    task = task_for("sentiment")

    async def go() -> None:
        async with httpx.AsyncClient(transport=server.transport()) as http:
            engine = Engine(
                task,
                make_client(worker_flags(model="m"), http),
                FailingReader(path),
                JsonlFileSink(tmp_path / "r.jsonl", tmp_path / "d.jsonl"),
                worker_flags(concurrency=1, progress_interval=60),
                checkpoint=Checkpoint(tmp_path / "ckpt.json", {"run": 1}),
                log=lambda line: None,
            )
            await asyncio.wait_for(engine.run(), timeout=10)  # never waits for records that cannot come

    with pytest.raises(RuntimeError):
        asyncio.run(go())
    written = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(written) == 3
    assert json.loads((tmp_path / "ckpt.json").read_text())["state"]["records_done"] == 3


def test_an_unexpected_failure_is_one_line_without_traceback_or_value(tmp_path, monkeypatch, capsys):
    async def explode(self):
        raise RuntimeError(CANARY)

    monkeypatch.setattr(Engine, "run", explode)
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "text": "x"}\n')
    argv = ["--task", "sentiment", "--input", str(path), "--output", str(tmp_path / "r.jsonl")]
    argv += ["--dead-letter", str(tmp_path / "d.jsonl"), "--llm-url", "http://127.0.0.1:9", "--model", "m"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unexpected RuntimeError at llm_etl_provider.worker.cli:" in err
    assert CANARY not in err
    assert "Traceback" not in err


def test_an_input_unusable_as_a_whole_exits_as_a_configuration_error(tmp_path, capsys):
    """The reader's InputError (``formats.exceptions``) is no WorkerError, yet exits 2, in one line."""
    path = tmp_path / "in.txt"
    path.write_text('{"id": 1, "text": "x"}\n')
    argv = ["--task", "sentiment", "--input", str(path), "--output", str(tmp_path / "r.jsonl")]
    argv += ["--dead-letter", str(tmp_path / "d.jsonl"), "--llm-url", "http://127.0.0.1:9", "--model", "m"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: cannot tell the input format from the file name; pass --input-format jsonl or csv\n"
    )


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def run_engine(tmp_path: Path, *, client_wrapper=None, sink=None, transport=None, reader=None, task=None):
    """Run the engine over ten records with a 10 s bound; return the sink's files' lines."""
    from llm_etl_provider.worker.checkpoint import Checkpoint

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"good {CANARY}"}) + "\n" for i in range(10)))
    results, dead = tmp_path / "r.jsonl", tmp_path / "d.jsonl"

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport or FakeLLMServer().transport()) as http:
            client = make_client(worker_flags(model="m"), http)
            engine = Engine(
                task or task_for("sentiment"),
                client_wrapper(client) if client_wrapper else client,
                reader or RecordReader(path),
                sink or JsonlFileSink(results, dead),
                worker_flags(concurrency=2, progress_interval=60, max_dead_letter_ratio=1.0),
                checkpoint=Checkpoint(tmp_path / "ckpt.json", {"run": 1}),
                log=lambda line: None,
                sleep=no_wait,
            )
            await asyncio.wait_for(engine.run(), timeout=10)

    asyncio.run(go())
    return results.read_text().splitlines(), dead.read_text().splitlines()


def test_a_client_that_dies_ends_the_run_at_once(tmp_path):
    calls = []

    def dying(client):
        real = client.complete

        async def complete(request):
            calls.append(1)
            if len(calls) == 4:
                raise RuntimeError(CANARY)
            return await real(request)

        client.complete = complete
        return client

    with pytest.raises(RuntimeError):
        run_engine(tmp_path, client_wrapper=dying)
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "ckpt.json").read_text())["state"]["records_done"] == 3


def test_a_writer_that_dies_ends_the_run_at_once(tmp_path):
    class FullDisk(JsonlFileSink):
        def write_result(self, line):
            if line["id"] == 5:
                raise OSError(28, "No space left on device")
            super().write_result(line)

    with pytest.raises(OSError, match="No space left"):
        run_engine(tmp_path, sink=FullDisk(tmp_path / "r.jsonl", tmp_path / "d.jsonl"))
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(max_size=60) | st.sampled_from(['{"sentiment": "positive"}', '{"sentiment": NaN}']),
        min_size=1,
        max_size=4,
    )
)
def test_any_answer_of_the_model_is_a_result_or_a_dead_letter_in_strict_json(tmp_path_factory, answers):
    """Whatever the server answers (any text, JSON or not), each record is one result or one dead letter, and
    every written line is strict JSON."""
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        calls.append(1)
        content = answers[len(calls) % len(answers)]
        return httpx.Response(
            200,
            json={"choices": [{"message": {"content": content}, "finish_reason": "stop"}], "usage": {}},
        )

    tmp_path = tmp_path_factory.mktemp("fuzz")
    results, dead = run_engine(tmp_path, transport=httpx.MockTransport(handle))
    assert len(results) + len(dead) == 10
    for line in results + dead:
        strict_json.loads(line)
    assert sorted(json.loads(line)["id"] for line in results + dead) == list(range(10))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_read_as_csv_give_rows_in_order_or_a_refusal_that_names_no_value(data):
    """A CSV input: each row is a record or a counted blank line, in line order, or the whole input is refused
    for its header; no other exception escapes, and a refusal quotes nothing of the input."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.csv"
        path.write_bytes(data)
        reader = RecordReader(path, max_record_bytes=64)
        try:
            records = list(reader)
        except InputError as exc:
            message = str(exc).removeprefix(str(path))
            assert all(
                len(cell) < 3 or cell.decode("utf-8", "replace") not in message for cell in data.split(b",")
            )
            return
        lines = [r.line for r in records]
        assert lines == sorted(set(lines))
        for record in records:
            if record.fields is not None:
                dump_line(record.fields)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_gzipped_read_as_jsonl_give_a_record_or_a_counted_blank_for_every_line(data):
    import gzip
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl.gz"
        path.write_bytes(gzip.compress(data))
        reader = RecordReader(path, max_record_bytes=64)
        records = list(reader)
        physical = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        assert len(records) + reader.stats.blank_lines == physical
