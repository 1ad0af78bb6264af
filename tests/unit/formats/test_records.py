from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from llm_etl_provider.contract.invocation import AUTO_FORMAT, LINE_IDS
from llm_etl_provider.formats.exceptions import InputError, InputOverLimit
from llm_etl_provider.formats.records import InputLimits, RecordReader, detect_format


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(path: Path, **kwargs) -> tuple[list, RecordReader]:
    reader = RecordReader(path, **kwargs)
    return list(reader), reader


def test_jsonl_records_keep_their_line_numbers_and_ids(tmp_path):
    path = write(tmp_path / "in.jsonl", b'{"id": "a", "text": "x"}\n\n{"id": 2, "text": "y"}\n')
    records, reader = read_all(path)
    assert [(r.line, r.record_id, r.error) for r in records] == [(1, "a", None), (3, 2, None)]
    assert reader.stats.blank_lines == 1
    assert reader.count() == 2


def test_records_without_ids_are_named_by_their_line_once_each(tmp_path):
    path = write(tmp_path / "in.jsonl", b'{"text": "x"}\n\n{"text": "x", "id": "a"}\n{"text": "x"}\n')
    records, _ = read_all(path, id_field=LINE_IDS)
    assert [(r.line, r.record_id, r.error) for r in records] == [(1, 1, None), (3, 3, None), (4, 4, None)]
    csv_path = write(tmp_path / "in.csv", b"text\nx\nx\n")
    records, _ = read_all(csv_path, id_field=LINE_IDS)
    assert [(r.line, r.record_id, r.error) for r in records] == [(2, 2, None), (3, 3, None)]


def test_bom_crlf_and_trailing_whitespace_are_accepted(tmp_path):
    path = write(
        tmp_path / "in.jsonl", b'\xef\xbb\xbf{"id": "a", "text": "x"}\r\n{"id": "b", "text": "y"}  \r\n'
    )
    records, _ = read_all(path)
    assert [r.record_id for r in records] == ["a", "b"]
    assert all(r.error is None for r in records)


def test_a_bom_is_only_stripped_at_the_input_s_start_not_where_a_later_shard_begins(tmp_path):
    # a BOM mid-file (concatenated files) is malformed JSON to the stage's validation; the worker of the
    # shard that begins there must see the same, or a record the stage counted as malformed is enriched
    path = write(tmp_path / "in.jsonl", b'\xef\xbb\xbf{"id": "a", "text": "x"}\n')
    assert [r.error for r in RecordReader(path)] == [None]
    assert [(r.line, r.error) for r in RecordReader(path, line_offset=9)] == [(10, "malformed_json")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"id": "a", "text": ', "malformed_json"),
        (b'["not", "an", "object"]', "not_an_object"),
        (b'{"id": "a", "text": "\xff\xfe"}', "invalid_utf8"),
        (b'{"text": "no id"}', "missing_id"),
        (b'{"id": "", "text": "empty id"}', "missing_id"),
        (b'{"id": true, "text": "bool id"}', "missing_id"),
        (b'{"id": {"x": 1}, "text": "object id"}', "missing_id"),
    ],
)
def test_malformed_lines_become_records_with_a_reason(tmp_path, line, reason):
    path = write(
        tmp_path / "in.jsonl", b'{"id": "ok", "text": "x"}\n' + line + b'\n{"id": "ok2", "text": "y"}\n'
    )
    records, _ = read_all(path)
    assert [r.error for r in records] == [None, reason, None]
    bad = records[1]
    assert bad.line == 2
    assert bad.fields is None
    assert bad.detail


def test_error_details_do_not_echo_record_content(tmp_path):
    path = write(tmp_path / "in.jsonl", b'{"id": "a", "text": "CANARY-SECRET" oops}\n')
    (record,) = RecordReader(path)
    assert "CANARY" not in record.detail
    assert "CANARY" in (record.raw or "")  # kept for the dead letter, which is an output, not a log


def test_oversized_record_is_skipped_unread_and_the_next_line_still_parses(tmp_path):
    big = b'{"id": "big", "text": "' + b"x" * 5_000_000 + b'"}\n'
    path = write(tmp_path / "in.jsonl", big + b'{"id": "after", "text": "y"}\n')
    records, reader = read_all(path, max_record_bytes=1 << 20)
    assert [(r.line, r.error) for r in records] == [(1, "record_too_large"), (2, None)]
    assert records[0].raw is None
    assert reader.count() == 2


def test_a_line_exactly_at_the_limit_is_accepted(tmp_path):
    line = b'{"id": "a", "text": "' + b"x" * 100 + b'"}'
    path = write(tmp_path / "in.jsonl", line + b"\n")
    records, _ = read_all(path, max_record_bytes=len(line) + 1)
    assert records[0].error is None


def test_gzip_is_detected_by_content_not_name(tmp_path):
    path = write(
        tmp_path / "in.jsonl", gzip.compress(b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n')
    )
    records, reader = read_all(path)
    assert [r.record_id for r in records] == ["a", "b"]
    assert reader.count() == 2


def test_truncated_gzip_fails_the_run_naming_the_file(tmp_path):
    data = gzip.compress(b"".join(b'{"id": "%d", "text": "x"}\n' % i for i in range(1000)))
    path = write(tmp_path / "cut.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz"):
        list(RecordReader(path))


def test_csv_rows_with_quoted_newlines_keep_their_first_line(tmp_path):
    path = write(tmp_path / "in.csv", b'id,review\r\na,"first\nsecond"\r\nb,plain\r\n')
    records, reader = read_all(path)
    assert [(r.line, r.record_id, r.fields) for r in records] == [
        (2, "a", {"id": "a", "review": "first\nsecond"}),
        (4, "b", {"id": "b", "review": "plain"}),
    ]
    assert reader.count() == 2


def test_csv_ragged_rows_and_bad_utf8_are_dead_letter_records(tmp_path):
    path = write(tmp_path / "in.csv", b"\xef\xbb\xbfid,review\na,ok\nb,too,many\nc,\xff\n\nd,fine\n")
    records, reader = read_all(path)
    assert [(r.line, r.error) for r in records] == [
        (2, None),
        (3, "ragged_row"),
        (4, "invalid_utf8"),
        (6, None),
    ]
    assert reader.stats.blank_lines == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b",\n1,2\n", r"in\.csv:1: the CSV file has no header row"),
        (b"\nid,id\n1,2\n", r"in\.csv:2: the CSV header names columns 1 and 2 alike"),
    ],
)
def test_unusable_csv_headers_fail_with_file_and_line(tmp_path, data, message):
    path = write(tmp_path / "in.csv", data)
    with pytest.raises(InputError, match=message):
        list(RecordReader(path))


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_an_empty_file_has_no_records(tmp_path, name):
    records, reader = read_all(write(tmp_path / name, b""))
    assert records == []
    assert reader.count() == 0


def test_formats_come_from_the_name_or_the_declaration(tmp_path):
    assert detect_format(Path("a.jsonl.gz"), AUTO_FORMAT) == "jsonl"
    assert detect_format(Path("a.CSV"), AUTO_FORMAT) == "csv"
    assert detect_format(Path("a.txt"), "csv") == "csv"
    with pytest.raises(InputError, match="--input-format"):
        detect_format(Path("a.txt"), AUTO_FORMAT)
    with pytest.raises(InputError, match="unknown input format"):
        detect_format(Path("a.jsonl"), "xml")


def test_missing_input_is_a_configuration_error(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        list(RecordReader(tmp_path / "absent.jsonl"))


def test_custom_id_field(tmp_path):
    path = write(tmp_path / "in.jsonl", json.dumps({"uid": 7, "text": "x"}).encode() + b"\n")
    (record,) = RecordReader(path, id_field="uid")
    assert record.record_id == 7


def test_a_repeated_id_is_a_duplicate_of_its_first_line(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": 7}, {"id": "7"}, {"id": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = list(RecordReader(path, line_offset=100))
    assert [r.error for r in records] == [None, None, "duplicate_id", None, "duplicate_id", None]
    assert records[2].detail == "the record at input line 101 has the same id"
    assert records[2].record_id == "a"  # the dead letter still names it
    assert json.loads(records[2].raw or "") == {"id": "a"}
    again = list(RecordReader(path, line_offset=100))  # a second pass (a resumed run) sees the same
    assert [r.error for r in again] == [r.error for r in records]


def test_lines_the_stage_found_repeated_in_an_earlier_shard_are_duplicates(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\nx,1\ny,2\nz,3\n")
    records = list(RecordReader(path, line_offset=40, duplicate_lines={43}))
    assert [(r.line, r.error) for r in records] == [(42, None), (43, "duplicate_id"), (44, None)]
    assert records[1].detail == "a record in an earlier shard has the same id"


def test_a_lone_carriage_return_does_not_end_a_csv_line(tmp_path):
    # the stage cuts lines at "\n" only; were "\r" a line end here, every later line number would shift
    path = write(tmp_path / "in.csv", b'id,text\n1,"a\rb"\n2,c\r\n3,x\ry\n4,d\n')
    records, _ = read_all(path, input_format="csv")
    assert [(r.line, r.error) for r in records] == [(2, None), (3, None), (4, "malformed_csv"), (5, None)]
    assert records[0].fields == {"id": "1", "text": "a\rb"}
    assert records[1].fields == {"id": "2", "text": "c"}


def test_the_byte_cap_stops_a_read_inside_one_endless_line(tmp_path):
    """A gzip bomb of one line with no end: the reader skips an over-long line in chunks, so only a cap on the
    bytes read stops it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"x" * (1 << 20)
    path = tmp_path / "one-line.jsonl.gz"
    path.write_bytes(b"".join(compressor.compress(block) for _ in range(64)) + compressor.flush())
    reader = RecordReader(path, limits=InputLimits(max_bytes=4 << 20, max_records=10))
    with pytest.raises(InputOverLimit, match=r"one-line.jsonl.gz: the input is over 4194304 bytes"):
        list(reader)


def test_without_limits_the_reader_reads_any_amount(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n" * 20_001 + b'{"id": 1}\n')
    records = list(RecordReader(path))
    assert len(records) == 1
    assert RecordReader(path).count() == 1
    with pytest.raises(InputOverLimit, match="20001 blank lines against 0 records"):
        list(
            RecordReader(path, limits=InputLimits(max_bytes=1 << 30, max_records=10, free_blank_lines=20_000))
        )
