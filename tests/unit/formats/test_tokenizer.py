"""The stage's shards and the worker's reader see the same units: a property over arbitrary inputs, and the
cases it found where they did not (each a plain regression test)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llm_etl_provider.exceptions import StagingInputError
from llm_etl_provider.formats.exceptions import CsvLineTooLong, InputError
from llm_etl_provider.formats.records import InputRecord, RecordReader
from llm_etl_provider.formats.tokenizer import begins_gzip, csv_rows, jsonl_lines
from llm_etl_provider.staging.cutting import Shard, plan_shards

BOM = b"\xef\xbb\xbf"


@dataclass
class Read:
    """What a reader gave before it ended, and the error it ended with (its file named ``<input>``)."""

    records: list[InputRecord]
    blank_lines: int
    blank_line_numbers: list[int]
    error: str | None


def read(
    path: Path, fmt: str, limit: int, line_offset: int = 0, duplicate_lines: Collection[int] = ()
) -> Read:
    reader = RecordReader(
        path,
        input_format=fmt,
        max_record_bytes=limit,
        line_offset=line_offset,
        duplicate_lines=duplicate_lines,
    )
    records: list[InputRecord] = []
    error = None
    try:
        records.extend(reader)
    except InputError as exc:
        error = str(exc).replace(str(path), "<input>")
    return Read(records, reader.stats.blank_lines, reader.stats.blank_line_numbers, error)


def comparable(record: InputRecord) -> InputRecord:
    # a duplicate's detail names the first line of its id the reader saw, which a shard's reader may not
    return dataclasses.replace(record, detail="") if record.error == "duplicate_id" else record


@dataclass
class Outcome:
    """The whole input's read, the shards, and the stage's refusal (its file named ``<input>``)."""

    whole: Read
    shards: list[Shard]
    refusal: str | None = None


def stage_and_read(work: Path, data: bytes, fmt: str, limit: int, shard_bytes: int) -> Outcome:
    """Read the input whole, as the stage's validation does; then shard it and read every shard as its worker
    would, with the lines the validation found repeating an earlier id within the shard's lines.

    Asserts that the shards' reads, concatenated, equal the whole read: every record field (a duplicate's
    detail aside), the error that ended the read, and the blank lines.
    """
    source = work / f"in.{fmt}"
    source.write_bytes(data)
    whole = read(source, fmt, limit)
    try:
        shards = list(
            plan_shards(source, input_format=fmt, max_shard_bytes=shard_bytes, max_record_bytes=limit)
        )
    except StagingInputError as exc:
        return Outcome(whole, [], str(exc).replace(str(source), "<input>"))
    duplicates = [r.line for r in whole.records if r.error == "duplicate_id"]
    got = Read([], 0, [], None)
    for shard, following in zip(shards, [*shards[1:], None], strict=False):
        end = following.first_line if following else float("inf")
        path = work / f"shard-{shard.index}.{fmt}.gz"
        path.write_bytes(shard.data)
        part = read(
            path, fmt, limit, shard.line_offset, [n for n in duplicates if shard.first_line <= n < end]
        )
        got.records += part.records
        got.blank_lines += part.blank_lines
        got.blank_line_numbers += part.blank_line_numbers
        if part.error is not None:
            got.error = part.error
            break
    if not shards:
        # nothing to shard: no record at all (the stage's validation refuses such an input)
        assert whole.records == []
        return Outcome(whole, shards)
    assert [comparable(r) for r in got.records] == [comparable(r) for r in whole.records]
    assert got.error == whole.error
    if whole.error is None:
        assert got.blank_lines == whole.blank_lines
        assert got.blank_line_numbers[:100] == whole.blank_line_numbers
        assert sum(s.records for s in shards) == len(whole.records)
    return Outcome(whole, shards)


def check_refusal(outcome: Outcome, plain: bytes, limit: int) -> None:
    """A refusal of the stage is one the whole read makes too, or one the stage documents."""
    message, whole = outcome.refusal, outcome.whole
    assert message is not None
    if match := re.fullmatch(r"<input>:(\d+): a CSV line over max_record_bytes .*", message):
        # the stage's own rule: it cannot cut such a line; the worker reads it whole (its fields may fit)
        number = int(match[1])
        line = plain.split(b"\n")[number - 1]
        line = line.removeprefix(BOM) if number == 1 else line
        assert len(line.rstrip(b"\r\n")) > limit
    elif match := re.fullmatch(
        r"<input>:(\d+): a CSV header spanning lines cannot be repeated per shard", message
    ):
        # the stage's own rule (the worker reads such a header): nothing starts on the header's second line
        after = int(match[1]) + 1
        assert whole.error is not None or (
            all(r.line != after for r in whole.records) and after not in whole.blank_line_numbers
        )
    elif message.startswith("<input>: the CSV header cannot be parsed: "):
        assert whole.error is not None
        assert whole.error.endswith(message.removeprefix("<input>:"))  # the worker names the line too
    elif message.startswith("<input>: the input cannot be read to its end: "):
        assert whole.error is not None  # the same, or the CSV header, which it reads first
    else:
        pytest.fail(f"unexpected refusal: {message}")


ids = st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "", " ", True, None, 1.5]))
json_lines = st.one_of(
    st.builds(
        lambda i, t, ascii_only: json.dumps({"id": i, "text": t}, ensure_ascii=ascii_only).encode(),
        ids,
        st.text(max_size=30),
        st.booleans(),
    ),
    st.sampled_from(
        [
            *(b"", b"  ", b"\r", b"\x1f", "\u00a0\u2028".encode(), b'{"id": 7}\r\r'),
            *(b"{broken", b"[1]", b'{"text": "no id"}', b'{"id": "\xff"}', b"\xff\xfe"),
            *(BOM + b'{"id": 9}', BOM + BOM + b'{"id": 8}'),
        ]
    ),
    st.builds(lambda n, c: c * n, st.integers(0, 90), st.sampled_from([b"x", b" ", b"\r", "é".encode()])),
    st.binary(max_size=30),
)
csv_headers = st.sampled_from(
    [
        *[b"id,text"] * 6,
        *(b"id", b"text,id,x", b'id,"te""xt"', BOM + b"id,text"),
        *(b"", b",", b"id,id", b'"i\nd",text'),  # refused by the stage or the worker
    ]
)
csv_fields = st.one_of(
    st.sampled_from([b"1", b"2", b"a", b""]),  # ids that repeat
    st.text(alphabet="ab1 é", max_size=6).map(str.encode),
    st.text(alphabet='ab,\n\r" é', max_size=14).map(lambda t: ('"' + t.replace('"', '""') + '"').encode()),
    st.sampled_from([b'"', b'"open', b'a"b', b"\r", b"x\ry", b'""', b"\xff", BOM + b"id", b"\x00"]),
    st.builds(lambda n, q: q + b"z" * n + q, st.integers(0, 30), st.sampled_from([b"", b'"'])),
    st.builds(lambda n, m: b'"' + b"z" * n + b"\n" + b"z" * m + b'"', st.integers(0, 30), st.integers(0, 30)),
)
csv_lines = st.one_of(
    st.lists(csv_fields, min_size=1, max_size=3).map(b",".join),
    st.sampled_from([b"", b"\r"]),
)
separators = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r"])


@st.composite
def documents(draw: st.DrawFn, first: st.SearchStrategy[bytes], lines: st.SearchStrategy[bytes]) -> bytes:
    """Lines, each with a line end ("\\r" included, which is none), perhaps none at the very end."""
    parts = [draw(first), *draw(st.lists(lines, min_size=1, max_size=40))]
    ends = draw(st.lists(separators, min_size=len(parts), max_size=len(parts)))
    if draw(st.booleans()):
        ends[-1] = b""
    return b"".join(line + end for line, end in zip(parts, ends, strict=True))


binary_documents = st.one_of(
    st.binary(max_size=300), documents(st.binary(max_size=20), st.binary(max_size=20))
)
jsonl_documents = documents(json_lines, json_lines)
csv_documents = documents(csv_headers, csv_lines)


def mostly(own: st.SearchStrategy[bytes], other: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Documents of the format read 6 times in 8, else arbitrary bytes or a document of the other format."""
    return st.integers(0, 7).flatmap(lambda k: own if k < 6 else binary_documents if k == 6 else other)


contents = {"jsonl": mostly(jsonl_documents, csv_documents), "csv": mostly(csv_documents, jsonl_documents)}
packings = st.sampled_from(["plain", "plain", "plain", "gzip", "gzip", "truncated gzip"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    bom=st.booleans(),  # a BOM in front
    packing=packings,
    cut=st.integers(0, 1 << 16),  # where a truncated gzip ends
    limit=st.integers(8, 80),
    room=st.integers(0, 60),
)
def test_the_shards_read_as_the_whole_input_reads(fmt, data, bom, packing, cut, limit, room):
    """Any bytes, read as either format: the shards' records, one after the other, are the whole input's.

    Cross-shard duplicates are compared as the pipeline hands them over: the stage's validation (a whole
    read) finds the lines that repeat an earlier id, and each shard's worker gets those within its lines
    (``duplicate_lines``); so records must match exactly, ``duplicate_id`` included, but for a duplicate's
    detail, which names the first line of the id that its own reader saw.

    Where the stage refuses the input, either the whole read refuses it too (a CSV header that cannot be
    parsed, an input that cannot be read to its end), or the refusal is the stage's documented own (a CSV
    line over ``max_record_bytes``, which it cannot cut; a CSV header spanning lines, which it cannot repeat),
    checked against the input. An input with no record at all has no shard: the stage's validation refuses
    it, so only its having no record is checked.
    """
    plain = (BOM if bom else b"") + data.draw(contents[fmt], label="content")
    packed = plain if packing == "plain" else gzip.compress(plain, mtime=0)
    if packing == "truncated gzip":
        packed = packed[: cut % len(packed)]
    with tempfile.TemporaryDirectory() as work:
        outcome = stage_and_read(Path(work), packed, fmt, limit, 2 * limit + room)
    if outcome.refusal is not None:
        check_refusal(outcome, plain, limit)
    # what was tried (pytest --hypothesis-show-statistics)
    shards = "3+" if len(outcome.shards) >= 3 else len(outcome.shards)
    event(f"stage: {kind(outcome.refusal) or shards}, read: {kind(outcome.whole.error) or 'ok'}")


def kind(error: str | None) -> str | None:
    return error and re.sub(r"^<input>(:\d+)?: |:.*| \(.*", "", error)


# The cases the property found in the stage and the worker as they were, each with its own tokenizer.


def staged(tmp_path: Path, data: bytes, fmt: str, limit: int = 100, shard_bytes: int = 200) -> Outcome:
    outcome = stage_and_read(tmp_path, data, fmt, limit, shard_bytes)
    assert outcome.refusal is None, outcome.refusal
    return outcome


def errors(outcome: Outcome) -> list[tuple[int, str | None]]:
    return [(r.line, r.error) for r in outcome.whole.records]


def test_a_first_line_just_over_the_limit_with_its_bom_stays_too_large_in_its_shard(tmp_path):
    # the stage stripped the BOM from the line it had cut: three bytes shorter, the shard's worker parsed it
    outcome = staged(tmp_path, BOM + b'{"id":12}\n{"id":2}\n', "jsonl", limit=10, shard_bytes=100)
    assert errors(outcome) == [(1, "record_too_large"), (2, None)]


def test_only_one_bom_is_stripped_from_the_first_line(tmp_path):
    # the stage stripped one BOM, then shard 0's worker (at the input's first line) stripped the second
    outcome = staged(tmp_path, BOM + BOM + b'{"id": 1}\n', "jsonl")
    assert errors(outcome) == [(1, "malformed_json")]
    rows = b"".join(b"%d,%s\n" % (i, b"x" * 40) for i in range(8))
    outcome = staged(tmp_path, BOM + BOM + b"id,t\n" + rows, "csv", limit=60, shard_bytes=130)
    assert len(outcome.shards) > 1
    assert {r.error for r in outcome.whole.records} == {"missing_id"}  # its first column is "\ufeffid"


def test_a_blank_line_is_blank_to_the_stage_as_to_the_worker(tmp_path):
    # the stage counted records with bytes.strip(), the worker with str.strip(): the shard's count differed
    outcome = staged(tmp_path, b'{"id": 1}\n\x1f\n\xc2\xa0\xe2\x80\xa8\n' + b" " * 150 + b"\n", "jsonl")
    assert errors(outcome) == [(1, None), (4, "record_too_large")]
    assert outcome.whole.blank_lines == 2
    assert sum(s.records for s in outcome.shards) == 2


def test_a_quoted_field_ending_the_input_without_a_newline_keeps_its_value(tmp_path):
    # the stage added the newline the input lacks, inside the open quoted field
    outcome = staged(tmp_path, b'id,t\n1,"abc', "csv")
    assert [r.fields for r in outcome.whole.records] == [{"id": "1", "t": "abc"}]


def test_a_field_over_the_limit_across_lines_ends_its_row_where_the_worker_ends_it(tmp_path):
    # the stage allowed fields two characters longer than the worker, so it saw rows where the worker did not
    rows = b'id,t\n1,"abcde\nfghij\n"\n2,b\n3,"c"\n4,d\n5,e\n6,f\n7,g\n'
    outcome = staged(tmp_path, rows, "csv", limit=10, shard_bytes=40)
    assert len(outcome.shards) > 2
    assert errors(outcome)[:2] == [(2, "record_too_large"), (4, "ragged_row")]


def test_blank_lines_before_the_csv_header_are_counted_by_the_first_shard(tmp_path):
    outcome = staged(tmp_path, b"\n\r\nid,t\n1,a\n\n2,b\n", "csv")
    assert errors(outcome) == [(4, None), (6, None)]
    assert outcome.whole.blank_line_numbers == [1, 2, 5]
    assert outcome.shards[0].line_offset == 0


@pytest.mark.parametrize(
    ("data", "line"),
    [
        # cut after its "\r", the rest dropped: a malformed row (a "\r" in an unquoted field) became a record
        (b"id,t\n1,abcdefgh\rXYZ\n2,b\n", 2),
        # the BOM counted in the cut but not in the check: 13 bytes passed as 8, the header cut short
        (BOM + b"id,abcdefghij\n1,2\n", 1),
    ],
)
def test_a_csv_line_over_the_limit_is_refused_never_cut(tmp_path, data, line):
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    with pytest.raises(StagingInputError, match=rf"in\.csv:{line}: a CSV line over max_record_bytes"):
        list(plan_shards(source, max_shard_bytes=100, max_record_bytes=10))


def test_a_line_at_the_limit_followed_by_carriage_returns_is_not_over_it(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,t\n" + b"1," + b"x" * 8 + b"\r\r\r\n2,b\n")
    assert [s.records for s in plan_shards(source, max_shard_bytes=100, max_record_bytes=10)] == [2]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("bad.jsonl", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage"),  # zlib.error escaped both
        ("bad.csv", gzip.compress(b"id,text\n1,a\n")[:-12]),  # the stage read the CSV header unguarded
    ],
)
def test_a_corrupt_gzip_input_is_refused_naming_the_file(tmp_path, name, data):
    source = tmp_path / name
    source.write_bytes(data)
    with pytest.raises(StagingInputError, match=r"bad\.\w+: the input cannot be read to its end"):
        list(plan_shards(source))
    with pytest.raises(InputError, match=r"bad\.\w+: the input cannot be read to its end"):
        RecordReader(source).count()


def test_the_last_line_without_a_line_end_reads_alike(tmp_path):
    # the stage added the missing newline: json's error column, and the dead letter's raw text, changed
    outcome = staged(tmp_path, b'{"id": 1}\n{"id":', "jsonl")
    assert [(r.line, r.error, r.detail, r.raw) for r in outcome.whole.records[1:]] == [
        (2, "malformed_json", "Expecting value at column 7", '{"id":')
    ]


@pytest.mark.parametrize(
    ("name", "data", "records"),
    [
        ("in.jsonl", BOM + b"\n\n{}\n", 1),  # the BOM line was counted, read as blank
        ("in.csv", b"id,t\n1,a\n2,x\ry\n3,b\n", 3),  # a malformed row was not counted
    ],
)
def test_count_is_the_number_of_records_read(tmp_path, name, data, records):
    source = tmp_path / name
    source.write_bytes(data)
    assert RecordReader(source, max_record_bytes=100).count() == len(list(RecordReader(source))) == records


def test_units_carry_their_first_line_and_raw_bytes(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(BOM + b'id,t\r\n\n1,"a\nb"\n')
    rows = list(csv_rows(source, max_record_bytes=10, line_offset=0))
    assert [(r.line, r.lines, r.raw, r.header, r.blank, r.record) for r in rows] == [
        (1, 1, BOM + b"id,t\r\n", True, False, False),
        (2, 1, b"\n", False, True, False),
        (3, 2, b'1,"a\nb"\n', False, False, True),
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"{}\n" + b"y" * 20 + b"\n \n")
    lines = list(jsonl_lines(source, max_record_bytes=10, line_offset=5))
    assert [(u.line, u.raw, u.data, u.blank) for u in lines] == [
        (6, b"{}\n", b"{}\n", False),
        (7, b"y" * 11 + b"\n", None, False),
        (8, b" \n", b" \n", True),
    ]


@pytest.mark.parametrize("compressed", [False, True])
def test_one_long_csv_line_is_refused_before_it_is_buffered(tmp_path, compressed):
    """A 300 KB gzip holding one 300 MiB CSV line took the reader to 620 MiB: every reader of CSV (the stage's
    validation, its ranges, the worker's) buffered a line whole. Here 64 MiB, read with a 1 MiB limit."""
    import tracemalloc

    line = b"id,text\n1," + b"x" * (64 << 20) + b"\n2,ok\n"
    path = tmp_path / ("long.csv.gz" if compressed else "long.csv")
    path.write_bytes(gzip.compress(line, 1) if compressed else line)
    del line
    tracemalloc.start()
    try:
        with pytest.raises(CsvLineTooLong) as refused:
            list(csv_rows(path, max_record_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.line == 2
    assert peak < 8 << 20


def test_gzip_is_told_by_its_magic_number_where_the_handle_stands_and_the_handle_stays(tmp_path):
    """One check for the worker's reader and the stage (an input the object transport cannot range over; a
    range that must not begin like gzip)."""
    path = tmp_path / "input"
    path.write_bytes(b'{"id": 1}\n' + gzip.compress(b"x"))
    with path.open("rb") as handle:
        assert not begins_gzip(handle)
        assert handle.tell() == 0
        handle.seek(10)
        assert begins_gzip(handle)
        assert handle.read(2) == b"\x1f\x8b"
