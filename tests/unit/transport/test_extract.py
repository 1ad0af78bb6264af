from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from upath import UPath

from llm_etl_provider.contract.answers import published_schema
from llm_etl_provider.formats.parquet import PartitionError
from llm_etl_provider.transport.exceptions import (
    DuplicateFrameError,
    FrameAuthenticationError,
    FrameGapError,
    MalformedFrameError,
    MissingTrailerError,
    RotatedLogError,
    TrailerMismatchError,
)
from llm_etl_provider.transport.extract import extract, published_rows
from llm_etl_provider.transport.frames import FrameWriter
from llm_etl_provider.transport.keys import new_key
from llm_etl_provider.transport.sources import file_lines, pod_log_lines, split_lines
from tests.fake_kubernetes import FakeCoreV1

KEY = new_key()


def frame_log(n_results=25, n_dead=3, run_id="run-7", input_sha256="a" * 64, **summary):
    lines: list[bytes] = [b"start task=sentiment\n"]
    writer = FrameWriter(KEY, run_id, 2, lines.append, chunk_bytes=200)
    for i in range(n_results):
        writer.add("result", json.dumps({"id": f"r{i}", "enrichment": {"sentiment": "positive"}}).encode())
        if i < n_dead:
            writer.add("dead_letter", json.dumps({"id": f"d{i}", "reason": "invalid_output"}).encode())
    writer.finish(
        {
            "task": "sentiment",
            "model": "smollm2",
            "records_per_s": 3.2,
            "input_sha256": input_sha256,
            **summary,
        }
    )
    lines.append(b"summary {}\n")
    return lines


def listing(path):
    return sorted(p.name for p in UPath(path).iterdir())


def test_publishes_results_dead_letters_manifest_and_success(tmp_path):
    manifest = extract(frame_log(), KEY, tmp_path / "out", source="test")
    out = tmp_path / "out"
    assert listing(out) == ["_SUCCESS", "dead_letter.jsonl", "manifest.json", "results.jsonl"]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [f"r{i}" for i in range(25)]
    assert len((out / "dead_letter.jsonl").read_text().splitlines()) == 3
    saved = json.loads((out / "manifest.json").read_text())
    assert saved == manifest
    assert (manifest["run_id"], manifest["shard"], manifest["task"], manifest["model"]) == (
        "run-7",
        2,
        "sentiment",
        "smollm2",
    )
    assert (manifest["records"], manifest["results"], manifest["dead_letters"]) == (28, 25, 3)
    assert manifest["files"]["results.jsonl"]["lines"] == 25
    assert manifest["extract"]["skipped_log_lines"] == 2
    assert manifest["worker_summary"]["records_per_s"] == 3.2


def test_works_on_any_fsspec_store():
    root = f"memory://extract-{uuid.uuid4().hex}/out"
    manifest = extract(frame_log(), KEY, root)
    assert listing(root) == ["_SUCCESS", "dead_letter.jsonl", "manifest.json", "results.jsonl"]
    assert manifest["results"] == 25


def flip_a_byte(lines):
    frame = bytearray(lines[5])
    frame[len(frame) // 2] ^= 0x01
    return [*lines[:5], bytes(frame), *lines[6:]]


DAMAGE: dict[
    str, tuple[Callable[[list[bytes]], list[bytes]], type[Exception] | tuple[type[Exception], ...]]
] = {
    "dropped frame": (lambda lines: lines[:4] + lines[5:], FrameGapError),
    "duplicated frame": (lambda lines: lines[:5] + lines[4:], DuplicateFrameError),
    "reordered frames": (lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]], FrameGapError),
    "flipped byte": (flip_a_byte, (FrameAuthenticationError, MalformedFrameError)),
    "missing trailer": (lambda lines: lines[:-2], MissingTrailerError),
    "frame split across two lines": (
        lambda lines: [*lines[:5], lines[5][:60] + b"\n", lines[5][60:], *lines[6:]],
        (FrameAuthenticationError, MalformedFrameError),
    ),
    "frame replayed from another run": (
        lambda lines: [*lines[:5], frame_log(run_id="run-8")[5], *lines[6:]],
        FrameAuthenticationError,
    ),
    "frame replayed under this run's name": (
        lambda lines: [*lines[:5], frame_log(run_id="run-8")[5].replace(b" run-8 ", b" run-7 "), *lines[6:]],
        FrameAuthenticationError,
    ),
    "cut at the kubelet's rotation point": (lambda lines: lines[6:], RotatedLogError),
}


@pytest.mark.parametrize("threads", [0, 2], ids=["inline", "threads"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_stream_publishes_nothing_and_leaves_no_staging(tmp_path, damage, threads):
    spoil, error = DAMAGE[damage]
    with pytest.raises(error):
        extract(spoil(frame_log()), KEY, tmp_path / "out", threads=threads)
    assert listing(tmp_path / "out") == []


@pytest.mark.parametrize("threads", [0, 2], ids=["inline", "threads"])
@pytest.mark.parametrize(
    ("bad", "missing"), [(4, 6), (40, 80)], ids=["in the batch being filled", "in a batch being opened"]
)
def test_the_first_failure_in_the_stream_is_the_one_reported(tmp_path, threads, bad, missing):
    lines = frame_log(n_results=1500, n_dead=200)
    frame = bytearray(lines[bad + 1])  # line 0 is the worker's start line
    frame[len(frame) // 2] ^= 0x01
    lines[bad + 1] = bytes(frame)  # frame `bad` does not authenticate ...
    del lines[
        missing + 1
    ]  # ... and a later frame is missing: found first by the reader, but later in the log
    with pytest.raises(FrameAuthenticationError, match=f"frame {bad} does not authenticate"):
        extract(lines, KEY, tmp_path / "out", threads=threads)
    assert listing(tmp_path / "out") == []


def test_threads_publish_what_the_inline_reader_publishes(tmp_path):
    log = frame_log(n_results=1500, n_dead=200)
    inline = extract(log, KEY, tmp_path / "inline", threads=0)
    threaded = extract(log, KEY, tmp_path / "threads", threads=2)
    assert inline["files"] == threaded["files"]
    assert inline["frames"] > 5 * 32  # more batches than the threads hold ahead


def test_the_wrong_key_publishes_nothing(tmp_path):
    with pytest.raises(FrameAuthenticationError):
        extract(frame_log(), new_key(), tmp_path / "out")
    assert listing(tmp_path / "out") == []


def test_a_failed_extraction_keeps_the_previous_good_output(tmp_path):
    extract(frame_log(), KEY, tmp_path / "out")
    before = (tmp_path / "out" / "manifest.json").read_text()
    with pytest.raises(FrameGapError):
        extract(frame_log()[:3] + frame_log()[5:], KEY, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_extracting_again_is_idempotent(tmp_path):
    log = frame_log()
    first = extract(log, KEY, tmp_path / "out")
    stamp = (tmp_path / "out" / "results.jsonl").stat().st_mtime_ns
    again = extract(log, KEY, tmp_path / "out")
    assert again == first
    assert (tmp_path / "out" / "results.jsonl").stat().st_mtime_ns == stamp
    assert listing(tmp_path / "out") == ["_SUCCESS", "dead_letter.jsonl", "manifest.json", "results.jsonl"]


def test_another_run_replaces_the_output_whole(tmp_path):
    extract(frame_log(n_results=5, run_id="run-a"), KEY, tmp_path / "out")
    manifest = extract(frame_log(n_results=9, n_dead=0, run_id="run-b"), KEY, tmp_path / "out")
    assert manifest["run_id"] == "run-b"
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 9
    assert (tmp_path / "out" / "dead_letter.jsonl").read_text() == ""


def test_file_lines_and_split_lines_bound_the_line_length(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"a\n" + b"x" * 200 + b"\nlast")
    assert list(file_lines(path, chunk_bytes=7)) == [b"a\n", b"x" * 200 + b"\n", b"last"]
    assert list(split_lines([b"y" * 25 + b"\n"], max_line=10)) == [b"y" * 10, b"y" * 10, b"y" * 5 + b"\n"]


def pod_with_log(api: FakeCoreV1, data: bytes) -> None:
    """The ``api`` fixture with one pod whose log is ``data``."""
    api.add_pod("etl", "llm-job-1", {}, log=data)


def test_pod_logs_are_streamed_not_preloaded_and_extract(tmp_path, api):
    pod_with_log(api, b"".join(frame_log()))
    manifest = extract(pod_log_lines("llm-job-1", "etl", core_api=api), KEY, tmp_path / "out")
    assert manifest["results"] == 25
    name, namespace, kwargs = api.log_reads[0]
    assert (name, namespace, kwargs["container"], kwargs["_preload_content"]) == (
        "llm-job-1",
        "etl",
        "base",
        False,
    )
    assert api.last_log_response is not None
    assert api.last_log_response.released


def test_a_pod_log_refused_part_way_closes_its_connection(tmp_path, api):
    # a rotated log: the first frames are gone; the stream is refused before its end, not drained, and its
    # connection must not go back to the pool half read
    pod_with_log(api, b"".join(frame_log()[2:]))
    with pytest.raises(RotatedLogError):
        extract(pod_log_lines("llm-job-1", "etl", core_api=api), KEY, tmp_path / "out")
    assert api.last_log_response is not None
    assert api.last_log_response.closed
    assert api.last_log_response.released


def test_the_staging_a_killed_extraction_left_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "out"
    (out / "_tmp-0123abcd").mkdir(parents=True)
    (out / "_tmp-0123abcd" / "results.jsonl").write_text('{"id": "decrypted"}\n')
    extract(frame_log(), KEY, out, source="test")
    assert listing(out) == ["_SUCCESS", "dead_letter.jsonl", "manifest.json", "results.jsonl"]


@pytest.mark.parametrize("read", ["b" * 64, None])
def test_a_stream_computed_over_another_input_publishes_nothing(tmp_path, read):
    """A complete, authentic stream of the right run and shard, whose worker read another input (a pod that
    mounted another shard's Secret, a stale try): not this shard's results."""
    with pytest.raises(TrailerMismatchError, match="computed over an input of sha256"):
        extract(frame_log(input_sha256=read), KEY, tmp_path / "out", expected_input_sha256="a" * 64)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    manifest = extract(frame_log(), KEY, tmp_path / "out", expected_input_sha256="a" * 64)
    assert manifest["worker_summary"]["input_sha256"] == "a" * 64


def test_a_stream_over_the_dead_letter_threshold_is_published_as_failed_without_success(tmp_path):
    """The worker's sealed summary says the shard went over its threshold: the results and dead letters are
    published for inspection, the manifest says failed and why, and there is no _SUCCESS, also when the same
    stream is extracted again."""
    log = frame_log(n_results=4, n_dead=3, dead_letter_threshold_exceeded=True, max_dead_letter_ratio=0.1)
    for _ in range(2):
        manifest = extract(log, KEY, tmp_path / "out", source="test")
        assert listing(tmp_path / "out") == ["dead_letter.jsonl", "manifest.json", "results.jsonl"]
    assert manifest["state"] == "failed"
    assert manifest["failure"] == (
        "3 of 7 records went to the dead letters, over the worker's max_dead_letter_ratio 0.1"
    )
    assert extract(frame_log(), KEY, tmp_path / "ok", source="test")["state"] == "succeeded"


def test_parquet_output_publishes_typed_files_read_back_by_duckdb_and_is_idempotent(tmp_path):
    import duckdb

    out = tmp_path / "out"
    manifest = extract(frame_log(), KEY, out, output_format="parquet")
    assert listing(out) == ["_SUCCESS", "dead_letter.parquet", "manifest.json", "results.parquet"]
    assert manifest["output_format"] == "parquet"
    assert manifest["files"]["results.parquet"]["rows"] == 25
    assert manifest["files"]["dead_letter.parquet"]["rows"] == 3
    rows = (
        duckdb.connect().execute(f"SELECT id, enrichment.sentiment FROM '{out}/results.parquet'").fetchall()
    )
    assert rows == [(f"r{i}", "positive") for i in range(25)]
    assert extract(frame_log(), KEY, out, output_format="parquet") == manifest  # the same stream again
    # another format of the same stream replaces the output whole
    extract(frame_log(), KEY, out)
    assert listing(out) == ["_SUCCESS", "dead_letter.jsonl", "manifest.json", "results.jsonl"]


def test_an_unknown_output_format_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="output_format must be one of jsonl, parquet"):
        extract(frame_log(), KEY, tmp_path / "out", output_format="csv")
    assert not (tmp_path / "out").exists()


def test_a_partitioned_parquet_output_is_one_folder_per_value_replaced_whole_and_read_back(tmp_path):
    import duckdb

    out = tmp_path / "out"
    schema = published_schema("sentiment")
    manifest = extract(
        frame_log(), KEY, out, output_format="parquet", partition_by="enrichment.sentiment",
        enrichment_schema=schema,
    )  # fmt: skip
    assert sorted(manifest["files"]) == ["dead_letter.parquet", "results/sentiment=positive/part-0.parquet"]
    assert manifest["partition_by"] == "enrichment.sentiment"
    assert manifest["files"]["results/sentiment=positive/part-0.parquet"]["rows"] == 25
    assert listing(out) == ["_SUCCESS", "dead_letter.parquet", "manifest.json", "results"]
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT sentiment, count(*) FROM read_parquet('{out}/results/*/*.parquet', "
            "hive_partitioning=true) GROUP BY ALL"
        )
        .fetchall()
    )
    assert rows == [("positive", 25)]
    assert [(row or {}).get("id") for row in published_rows(out)] == [f"r{i}" for i in range(25)]
    assert len(list(published_rows(out, dead_letters=True))) == 3
    # the same stream partitioned again: as published; by another column, or none: replaced whole
    assert extract(
        frame_log(), KEY, out, output_format="parquet", partition_by="enrichment.sentiment",
        enrichment_schema=schema,
    ) == manifest  # fmt: skip
    extract(frame_log(), KEY, out, output_format="parquet", partition_by="task", enrichment_schema=schema)
    assert sorted(p.name for p in (out / "results").iterdir()) == ["task=__HIVE_DEFAULT_PARTITION__"]
    extract(frame_log(), KEY, out, output_format="parquet")
    assert listing(out) == ["_SUCCESS", "dead_letter.parquet", "manifest.json", "results.parquet"]


def test_a_partition_column_the_results_lack_publishes_nothing(tmp_path):
    with pytest.raises(PartitionError, match=r"'region' is not a column of the results.*set carry_fields"):
        extract(frame_log(), KEY, tmp_path / "out", output_format="parquet", partition_by="region")
    assert listing(tmp_path / "out") == []
    with pytest.raises(ValueError, match="partition_by needs output_format=parquet"):
        extract(frame_log(), KEY, tmp_path / "out", partition_by="task")
