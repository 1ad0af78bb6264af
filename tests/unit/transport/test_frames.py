from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_etl_provider.transport.exceptions import (
    DuplicateFrameError,
    FrameAuthenticationError,
    FrameGapError,
    FrameOrderError,
    MalformedFrameError,
    MissingTrailerError,
    RotatedLogError,
    TrailerMismatchError,
)
from llm_etl_provider.transport.frames import MAX_LINE_BYTES, FrameReader, FrameWriter, WriterState
from llm_etl_provider.transport.keys import new_key

KEY = new_key()


def write_stream(items, *, key=KEY, run_id="run-1", shard=0, chunk_bytes=24_000, summary=None):
    lines: list[bytes] = []
    writer = FrameWriter(key, run_id, shard, lines.append, chunk_bytes=chunk_bytes)
    for stream, line in items:
        writer.add(stream, line)
    writer.finish(summary or {"task": "sentiment"})
    return lines


def read_stream(lines, *, key=KEY, **kwargs):
    """The lines read back as (stream, line) items: the results in order, then the dead letters in order."""
    reader = FrameReader(key, **kwargs)
    completed = [reader.feed(line) for line in lines]
    for c in completed:
        assert c.results.count(b"\n") == c.result_count
        assert c.dead_letters.count(b"\n") == c.dead_letter_count
    results = b"".join(c.results for c in completed).split(b"\n")[:-1]
    dead_letters = b"".join(c.dead_letters for c in completed).split(b"\n")[:-1]
    items = [("result", item) for item in results] + [("dead_letter", item) for item in dead_letters]
    return items, reader.finish()


def by_stream(items):
    return sorted(items, key=lambda item: item[0] != "result")  # stable: order within a stream kept


json_lines = st.lists(
    st.tuples(
        st.sampled_from(["result", "dead_letter"]),
        st.dictionaries(st.text(max_size=8), st.text(max_size=300) | st.integers(), max_size=4).map(
            lambda d: json.dumps(d, ensure_ascii=False).encode()
        ),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(items=json_lines, chunk_bytes=st.integers(min_value=1, max_value=30_000))
def test_round_trip_keeps_every_line_in_order(items, chunk_bytes):
    lines = write_stream(items, chunk_bytes=chunk_bytes)
    assert all(len(line) <= MAX_LINE_BYTES for line in lines)
    got, trailer = read_stream(lines)
    assert got == by_stream(items)
    assert trailer.results == sum(1 for s, _ in items if s == "result")
    assert trailer.dead_letters == len(items) - trailer.results


@settings(max_examples=10, deadline=None)
@given(size=st.integers(min_value=20_000, max_value=300_000), seed=st.integers(0, 2**32))
def test_records_larger_than_a_frame_span_several_frames(size, seed):
    rng = random.Random(seed)
    text = "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(size)
    )  # poorly compressible
    big = json.dumps({"id": "big", "text": text}).encode()
    lines = write_stream([("result", b'{"id":"a"}'), ("result", big), ("dead_letter", b'{"id":"c"}')])
    assert len(lines) > 2
    assert all(len(line) <= MAX_LINE_BYTES for line in lines)
    got, _ = read_stream(lines)
    assert got == [("result", b'{"id":"a"}'), ("result", big), ("dead_letter", b'{"id":"c"}')]


def stream_of(n=40, run_id="run-1"):
    """A stream of about 10 frames: poorly compressible records, cut into small chunks."""
    rng = random.Random(n)
    texts = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=rng.randrange(10, 900))) for _ in range(n)]
    items = [("result", json.dumps({"id": i, "text": text}).encode()) for i, text in enumerate(texts)]
    return write_stream(items, chunk_bytes=2_000, run_id=run_id)


def test_diagnostic_lines_and_kubernetes_timestamps_are_tolerated():
    lines = stream_of()
    mixed = [b"progress records=3/40\n"]
    for i, line in enumerate(lines):
        mixed.append(b"2026-11-24T01:02:03.123456789Z " + line)
        if i % 3 == 0:
            mixed.append(b"2026-11-24T01:02:03.2Z warning: slow request\n")
    got, trailer = read_stream(mixed)
    assert len(got) == 40
    assert trailer.frames == len(lines) - 1


def test_a_dropped_frame_is_a_gap():
    lines = stream_of()
    with pytest.raises(FrameGapError, match=r"shard 0: frames 3 to 3 are missing before frame 4"):
        read_stream(lines[:3] + lines[4:])


def test_a_duplicated_frame_is_detected():
    lines = stream_of()
    with pytest.raises(DuplicateFrameError, match="frame 5 appears twice"):
        read_stream(lines[:6] + lines[5:])


def test_reordered_frames_are_detected():
    lines = stream_of()
    swapped = lines[:2] + [lines[3], lines[2]] + lines[4:]
    with pytest.raises(FrameGapError):
        read_stream(swapped)
    with pytest.raises(FrameOrderError, match="frame 1 comes after frame 3"):
        read_stream(lines[:4] + [lines[1]] + lines[4:])


@pytest.mark.parametrize("position", [0, 10, -12])
def test_a_flipped_byte_fails_authentication(position):
    lines = stream_of()
    frame = bytearray(lines[3])
    index = len(frame) // 2 + position
    frame[index] = ord("A") if frame[index] != ord("A") else ord("B")
    with pytest.raises((FrameAuthenticationError, MalformedFrameError)):
        read_stream(lines[:3] + [bytes(frame)] + lines[4:])


def test_a_frame_moved_under_another_header_fails_authentication():
    lines = stream_of()
    header_2, body_3 = lines[2].rsplit(b" ", 1)[0], lines[3].rsplit(b" ", 1)[1]
    with pytest.raises(FrameAuthenticationError, match="frame 2 does not authenticate"):
        read_stream(lines[:2] + [header_2 + b" " + body_3] + lines[3:])


def test_a_missing_trailer_is_detected():
    lines = stream_of()
    with pytest.raises(MissingTrailerError, match=r"ends after frame \d+ without a trailer"):
        read_stream(lines[:-1])
    with pytest.raises(MissingTrailerError, match="no frame at all"):
        read_stream([b"just a log line\n"])


def test_the_wrong_key_is_detected():
    with pytest.raises(FrameAuthenticationError, match="frame 0 does not authenticate"):
        read_stream(stream_of(), key=new_key())


def test_a_log_cut_at_the_rotation_point_is_named():
    lines = stream_of()
    with pytest.raises(RotatedLogError, match=r"starts at frame 6, not 0: the kubelet rotated"):
        read_stream(lines[6:])


def test_a_frame_split_across_lines_is_rejected():
    lines = stream_of()
    frame = lines[3]
    half = len(frame) // 2
    with pytest.raises((FrameAuthenticationError, MalformedFrameError)):
        read_stream([*lines[:3], frame[:half] + b"\n", frame[half:], *lines[4:]])


def test_a_replayed_frame_from_another_run_is_refused():
    ours, theirs = (
        stream_of(),
        stream_of(run_id="run-2"),
    )
    with pytest.raises(FrameAuthenticationError, match="belongs to run 'run-2'"):
        read_stream(ours[:3] + [theirs[3]] + ours[4:])
    relabelled = theirs[3].replace(b" run-2 ", b" run-1 ", 1)
    with pytest.raises(FrameAuthenticationError, match="does not authenticate"):
        read_stream(ours[:3] + [relabelled] + ours[4:])
    with pytest.raises(FrameAuthenticationError, match="not run 'expected'"):
        read_stream(ours, run_id="expected")


def test_a_trailer_that_disagrees_is_refused():
    lines: list[bytes] = []
    writer = FrameWriter(KEY, "run-1", 0, lines.append, chunk_bytes=100)
    for i in range(10):
        writer.add("result", b'{"id":%d}' % i)
    writer.flush()
    writer.state.results += 1  # a writer whose counts drifted from what it sealed
    writer.finish({})
    with pytest.raises(TrailerMismatchError, match="results: trailer 11, read 10"):
        read_stream(lines)


def test_frames_after_the_trailer_are_refused():
    lines = stream_of()
    with pytest.raises(FrameOrderError, match="after the trailer"):
        read_stream([*lines, lines[-1]])


def test_a_resumed_writer_continues_the_same_stream():
    first: list[bytes] = []
    writer = FrameWriter(KEY, "run-1", 0, first.append, chunk_bytes=500)
    for i in range(30):
        writer.add("result", b'{"id":%d}' % i)
    writer.flush()
    saved = WriterState(**vars(writer.state))
    continued: list[bytes] = []
    resumed = FrameWriter(KEY, "run-1", 0, continued.append, state=saved, chunk_bytes=500)
    for i in range(30, 50):
        resumed.add("result", b'{"id":%d}' % i)
    resumed.finish({})
    got, trailer = read_stream(first + continued)
    assert [json.loads(line)["id"] for _, line in got] == list(range(50))
    assert trailer.results == 50


def test_no_frame_holds_plaintext():
    lines = write_stream([("result", b'{"note":"CANARY-PATIENT-4711 has diabetes"}')])
    assert not any(b"CANARY" in line or b"diabetes" in line for line in lines)


@pytest.mark.parametrize("run_id", ["", "has space", "x" * 201, "semi;colon"])
def test_run_ids_that_cannot_be_framed_are_refused(run_id):
    with pytest.raises(ValueError, match="run id"):
        FrameWriter(KEY, run_id, 0, lambda _: None)


@pytest.mark.parametrize("stream", ["result", "dead_letter"])
def test_a_stream_that_ends_in_a_cut_line_is_rejected(stream):
    lines: list[bytes] = []
    writer = FrameWriter(KEY, "run-1", 0, lines.append)
    writer.add(stream, b'{"id": 1}')
    writer._buffers[stream] += b'{"id": 2'  # what only a faulty writer holding the key could seal
    writer.finish()
    with pytest.raises(TrailerMismatchError, match="_end: trailer a whole line, read a cut line"):
        read_stream(lines)


def test_a_frame_of_an_unknown_kind_is_rejected():
    (frame, trailer) = write_stream([("result", b"{}")])
    with pytest.raises(MalformedFrameError, match="holds a cut or garbled frame"):
        read_stream([frame.replace(b" 0 R ", b" 0 X "), trailer])


def test_an_authenticated_frame_that_does_not_inflate_is_malformed():
    key = new_key()
    log: list[bytes] = []
    writer = FrameWriter(key, "run-1", 0, log.append)
    writer._seal("R", b"sealed with the right key, but not zlib")
    with pytest.raises(MalformedFrameError, match="shard 0: frame 0 does not decompress"):
        FrameReader(key).feed(log[0])
