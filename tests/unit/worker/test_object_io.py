"""The worker's side of the object transport against an in-memory store behind pre-signed-style URLs
(``httpx.MockTransport``): the range download, the part objects, the remote checkpoint and a resume."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import httpx
import pytest

from llm_etl_provider.contract.object_transport import (
    InputRange,
    ObjectTransport,
    ObjectTransportError,
    read_end_marker,
)
from llm_etl_provider.formats.records import RecordReader
from llm_etl_provider.transport.exceptions import TrailerMismatchError
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.keys import new_key
from llm_etl_provider.worker.checkpoint import run_fingerprint
from llm_etl_provider.worker.clients import make_client
from llm_etl_provider.worker.engine import Engine
from llm_etl_provider.worker.exceptions import ConfigurationError
from llm_etl_provider.worker.object_io import (
    ObjectPartSink,
    ObjectStoreError,
    ObjectStoreRefusedError,
    RemoteCheckpoint,
    UrlSource,
    download_input,
)
from llm_etl_provider.worker.tasks import task_for
from tests.unit.worker.fakes import Crash, FakeLLMServer, crashing, worker_flags

STORE = "http://store.test"


class MemoryStore:
    """Objects by URL path; GET honours Range (206), a missing object is 404, PUT replaces; the first
    ``failures`` requests answer ``failure_status``."""

    def __init__(self, *, ignore_range: bool = False, failures: int = 0, failure_status: int = 503) -> None:
        self.objects: dict[str, bytes] = {}
        self.ignore_range = ignore_range
        self.puts: list[str] = []
        self.failures = failures
        self.failure_status = failure_status

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.failures:
            self.failures -= 1
            return httpx.Response(self.failure_status)
        name = request.url.path
        if request.method == "PUT":
            self.objects[name] = request.read()
            self.puts.append(name)
            return httpx.Response(200)
        if name not in self.objects:
            return httpx.Response(404)
        body = self.objects[name]
        if (wanted := request.headers.get("range")) and not self.ignore_range:
            first, last = wanted.removeprefix("bytes=").split("-")
            return httpx.Response(206, content=body[int(first) : int(last) + 1])
        return httpx.Response(200, content=body)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))


def transport_for(data: bytes, start: int, end: int, *, parts: int = 40, part_records: int = 5, prefix=b""):
    return ObjectTransport(
        input=InputRange(
            url=f"{STORE}/in.jsonl",
            start=start,
            end=end,
            sha256=hashlib.sha256(prefix + data[start:end]).hexdigest(),
            prefix=prefix,
        ),
        parts=tuple(f"{STORE}/t/part-{k}" for k in range(parts)),
        checkpoint_get=f"{STORE}/t/checkpoint.json",
        checkpoint_put=f"{STORE}/t/checkpoint.json",
        end_put=f"{STORE}/t/end.json",
        part_records=part_records,
    )


def reviews(n: int) -> bytes:
    return b"".join(json.dumps({"id": f"r{i}", "text": f"good drug {i}"}).encode() + b"\n" for i in range(n))


def test_the_document_round_trips_and_a_malformed_one_is_refused():
    document = transport_for(reviews(3), 0, 10, prefix=b"id,text\n")
    assert ObjectTransport.from_json(document.to_json()) == document
    with pytest.raises(ObjectTransportError):
        ObjectTransport.from_json(b'{"input": {}}')


def test_the_download_is_the_range_after_its_prefix(tmp_path):
    store = MemoryStore()
    data = b"id,text\n1,a\n2,b\n3,c\n"
    store.objects["/in.jsonl"] = data
    document = transport_for(data, 12, 20, prefix=b"id,text\n")
    download_input(document, tmp_path / "input.csv", store.client())
    assert (tmp_path / "input.csv").read_bytes() == b"id,text\n2,b\n3,c\n"


def test_a_busy_store_is_retried_and_a_refusing_one_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr("llm_etl_provider.worker.object_io.time.sleep", lambda _: None)
    data = reviews(4)
    busy = MemoryStore(failures=3)
    busy.objects["/in.jsonl"] = data
    download_input(transport_for(data, 0, 40), tmp_path / "a.jsonl", busy.client())  # 3 x 503, then 206
    assert (tmp_path / "a.jsonl").read_bytes() == data[:40]
    failing = MemoryStore(failures=100)
    failing.objects["/in.jsonl"] = data
    with pytest.raises(ObjectStoreError, match="kept failing"):  # exit 1: a new try may succeed
        download_input(transport_for(data, 0, 40), tmp_path / "b.jsonl", failing.client())
    expired = MemoryStore(failures=1, failure_status=403)
    expired.objects["/in.jsonl"] = data
    # an expired URL that nothing renews: exit 1, the next try's pod gets URLs signed when it starts
    with pytest.raises(ObjectStoreError, match="no renewed URL came"):
        download_input(transport_for(data, 0, 40), tmp_path / "c.jsonl", expired.client())
    missing = MemoryStore()
    with pytest.raises(ObjectStoreRefusedError, match="HTTP 404"):  # exit 2: a retry would meet the same
        download_input(transport_for(data, 0, 40), tmp_path / "d.jsonl", missing.client())


class ExpiringStore(MemoryStore):
    """A store whose URLs carry a signature generation (``?sig=N``): it answers 403 "Request has expired" to
    any generation below ``valid_from``, as S3 does to a URL signed with credentials that have ended."""

    def __init__(self) -> None:
        super().__init__()
        self.valid_from = 0
        self.refused = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if int(request.url.params.get("sig", "0")) < self.valid_from:
            self.refused += 1
            return httpx.Response(
                403, content=b"<Code>AccessDenied</Code><Message>Request has expired</Message>"
            )
        return super().handle(request)


def signed(document: ObjectTransport, generation: int) -> ObjectTransport:
    def sign(url: str) -> str:
        return f"{url.split('?')[0]}?sig={generation}"

    return ObjectTransport(
        input=dataclasses.replace(document.input, url=sign(document.input.url)),
        parts=tuple(sign(url) for url in document.parts),
        checkpoint_get=sign(document.checkpoint_get),
        checkpoint_put=sign(document.checkpoint_put),
        end_put=sign(document.end_put),
        part_records=document.part_records,
    )


def test_expired_urls_are_renewed_from_their_file_mid_run(tmp_path, monkeypatch):
    """Issue 23 (9): URLs signed with temporary credentials die within the hour, and a 403 ended the worker
    with exit 2 and no retry. Now the operator renews the URL file while the pod runs, and a worker refused a
    URL as expired re-reads the file and goes on with the renewed one."""
    store = ExpiringStore()
    data = reviews(4)
    store.objects["/in.jsonl"] = data
    path = tmp_path / "object.json"
    first = signed(transport_for(data, 0, len(data)), 1)
    path.write_bytes(first.to_json())
    urls = UrlSource(first, path)
    download_input(urls, tmp_path / "input.jsonl", store.client())
    sink = ObjectPartSink(new_key(), "run", 0, 1, urls, store.client())
    sink.open(None)
    store.valid_from = 2  # the credentials that signed generation 1 ended

    def renew_while_waiting(_: float) -> None:  # the operator's renewal lands while the worker waits
        path.write_bytes(signed(first, 2).to_json())

    monkeypatch.setattr("llm_etl_provider.worker.object_io.time.sleep", renew_while_waiting)
    sink.write_result({"id": "r0", "line": 1, "enrichment": {}, "meta": {}})
    sink.position()  # a part PUT: refused, renewed, written
    assert store.refused == 1
    assert "/t/part-0" in store.objects
    assert urls.transport.parts[0].endswith("?sig=2")
    # a document for another shard is never taken for a renewal
    path.write_bytes(signed(transport_for(data, 0, 10), 3).to_json())
    assert not urls.renew()


def test_an_input_that_changed_since_the_stage_is_refused(tmp_path):
    store = MemoryStore()
    data = reviews(4)
    document = transport_for(data, 0, 40)
    store.objects["/in.jsonl"] = b"X" + data[1:]
    with pytest.raises(ConfigurationError, match="the input changed since the stage"):
        download_input(document, tmp_path / "input.jsonl", store.client())
    assert not list(tmp_path.iterdir())


def test_a_store_that_ignores_range_is_refused(tmp_path):
    store = MemoryStore(ignore_range=True)
    data = reviews(4)
    store.objects["/in.jsonl"] = data
    with pytest.raises(ObjectStoreRefusedError, match="HTTP 200"):
        download_input(transport_for(data, 5, 40), tmp_path / "input.jsonl", store.client())


def run(
    tmp_path: Path, store: MemoryStore, document: ObjectTransport, key: bytes, *, attempt=1, crash_after=None
):
    task = task_for("sentiment")
    local = tmp_path / f"input-{attempt}.jsonl"
    http_store = store.client()
    download_input(document, local, http_store)

    Sink = crashing(ObjectPartSink, crash_after) if crash_after is not None else ObjectPartSink
    fingerprint = run_fingerprint(local, task.fingerprint, "id")

    async def go():
        server = FakeLLMServer()
        async with httpx.AsyncClient(transport=server.transport()) as http:
            engine = Engine(
                task,
                make_client(worker_flags(), http),
                RecordReader(local),
                Sink(key, "run-7", 2, attempt, document, http_store),
                worker_flags(checkpoint_every=document.part_records, concurrency=3),
                checkpoint=RemoteCheckpoint(document, http_store, fingerprint),
                log=lambda _: None,
            )
            return await engine.run()

    return asyncio.run(go())


def parts_of(store: MemoryStore) -> io.BytesIO:
    count = read_end_marker(store.objects["/t/end.json"])
    return io.BytesIO(b"".join(store.objects[f"/t/part-{k}"] for k in range(count)))


def test_a_killed_worker_resumes_after_its_last_part_and_the_parts_extract_whole(tmp_path):
    store, key, data = MemoryStore(), new_key(), reviews(23)
    store.objects["/in.jsonl"] = data
    document = transport_for(data, 0, len(data), part_records=5)
    with pytest.raises(Crash):
        run(tmp_path, store, document, key, attempt=1, crash_after=12)
    written_before = len(store.puts)
    assert "/t/checkpoint.json" in store.puts
    assert "/t/end.json" not in store.objects
    summary = run(tmp_path, store, document, key, attempt=2)
    assert summary["resumed_from"] == 10  # the last checkpoint (and part) before the crash
    # the resumed try wrote only the parts after the checkpoint: records 10-14, 15-19, 20-22, the trailer
    resumed_parts = [p for p in store.puts[written_before:] if "/part-" in p]
    assert resumed_parts == [f"/t/part-{k}" for k in range(2, 6)]
    manifest = extract(parts_of(store), key, tmp_path / "out", run_id="run-7", shard=2, expected_attempt=2)
    assert (manifest["results"], manifest["dead_letters"]) == (23, 0)
    ids = [json.loads(line)["id"] for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert ids == [f"r{i}" for i in range(23)]
    with pytest.raises(TrailerMismatchError, match="sealed by try 2"):
        extract(parts_of(store), key, tmp_path / "again", run_id="run-7", shard=2, expected_attempt=1)


def test_used_up_part_urls_fail_the_run_clearly(tmp_path):
    store, key, data = MemoryStore(), new_key(), reviews(12)
    store.objects["/in.jsonl"] = data
    with pytest.raises(ObjectStoreRefusedError, match="part URLs are used up"):
        run(tmp_path, store, transport_for(data, 0, len(data), parts=2, part_records=3), key)


def test_a_parquet_range_is_its_row_groups_and_the_footer_read_into_json_lines_as_the_stage_reads_them(
    tmp_path,
):
    """Five row groups (a dictionary-encoded, a nested and a timestamp column) in two pods' ranges: each
    worker fetches its row groups' bytes and the footer only, and its JSON lines are the stage's lines of
    those rows; a file changed since the stage is refused."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_etl_provider.formats.parquet import parquet_to_jsonl
    from llm_etl_provider.staging.object_transport import parquet_ranges

    table = pa.table({
        "id": [f"r{i}" for i in range(50)],
        "drug": pa.array([["a", "b"][i % 2] for i in range(50)]).dictionary_encode(),
        "visit": [{"site": "x", "codes": [i, None]} if i % 7 else None for i in range(50)],
        "seen": [datetime.datetime(2026, 1, 1, i % 24, tzinfo=datetime.UTC) for i in range(50)],
    })  # fmt: skip
    source = tmp_path / "in.parquet"
    pq.write_table(table, source, row_group_size=10)
    data = source.read_bytes()
    parquet_to_jsonl(source, tmp_path / "all.jsonl")
    every_line = (tmp_path / "all.jsonl").read_text().splitlines(keepends=True)
    ranges = parquet_ranges(source, tmp_path / "all.jsonl", 2)
    assert [r.row_groups for r in ranges] == [(0, 3), (3, 5)]
    assert [r.first_line for r in ranges] == [1, 31]
    assert [r.expanded for r in ranges] == [
        len("".join(every_line[:30]).encode()),
        len("".join(every_line[30:]).encode()),
    ]

    requested: list[str] = []
    store = MemoryStore()
    store.objects["/in.jsonl"] = data
    handle = store.handle

    def recording(request: httpx.Request) -> httpx.Response:
        requested.append(request.headers["range"])
        return handle(request)

    store.handle = recording  # type: ignore[method-assign]
    for byte_range in ranges:
        tail = byte_range.tail
        assert tail is not None
        document = dataclasses.replace(
            transport_for(data, byte_range.start, byte_range.end),
            input=InputRange(
                url=f"{STORE}/in.jsonl", start=byte_range.start, end=byte_range.end,
                sha256=hashlib.sha256(data[byte_range.start : byte_range.end] + data[tail:]).hexdigest(),
                row_groups=byte_range.row_groups, tail=byte_range.tail, object_size=len(data),
            ),
        )  # fmt: skip
        assert ObjectTransport.from_json(document.to_json()) == document
        target = tmp_path / f"shard-{byte_range.index}.jsonl"
        requested.clear()
        download_input(document, target, store.client())
        first = byte_range.first_line - 1
        rows = 30 if byte_range.index == 0 else 20
        assert target.read_text().splitlines(keepends=True) == every_line[first : first + rows]
        assert requested == [
            f"bytes={byte_range.start}-{byte_range.end - 1}",
            f"bytes={byte_range.tail}-{len(data) - 1}",
        ]
        assert not list(tmp_path.glob("shard-*.parquet"))
        assert not list(tmp_path.glob("*.part"))
    store.objects["/in.jsonl"] = data[:-9] + b"X" + data[-8:]  # the footer changed since the stage
    with pytest.raises(ConfigurationError, match="the input changed since the stage"):
        download_input(document, tmp_path / "again.jsonl", store.client())
    assert not (tmp_path / "again.jsonl").exists()
