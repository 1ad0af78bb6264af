"""Stream input records from JSONL or CSV files, plain or gzip-compressed, in constant memory.

Where lines and rows begin and end is the tokenizer's (:mod:`llm_etl_provider.formats.tokenizer`), which the
stage cuts its shards with too; this module turns its units into records, for the worker and the stage's
validation alike.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from llm_etl_provider.contract.codes import DeadLetterReason as Reason
from llm_etl_provider.contract.invocation import (
    AUTO_FORMAT,
    DEFAULT_MAX_RECORD_BYTES,
    INPUT_FORMATS,
    LINE_IDS,
    RECORD_FORMATS,
    RecordFormat,
    default_of,
)
from llm_etl_provider.formats import strict_json
from llm_etl_provider.formats.exceptions import InputError, InputOverLimit
from llm_etl_provider.formats.id_index import IdIndex
from llm_etl_provider.formats.tokenizer import CsvRow, JsonlLine, csv_rows, jsonl_lines

_SUFFIX_FORMATS: dict[str, RecordFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of the input, or the reason it could not be read.

    :param line: the 1-based line of the input file where the record starts
    :param fields: the record's fields, or None when the record is malformed
    :param record_id: the value of the id field, when there is one
    :param error: a reason code when the record is malformed (``malformed_json``, ``invalid_utf8`` ...)
    :param detail: what was wrong, without record content
    :param raw: the undecodable text of a malformed record, kept for its dead letter
    """

    line: int
    fields: dict[str, Any] | None
    record_id: str | int | None = None
    error: Reason | None = None
    detail: str = ""
    raw: str | None = None


@dataclass(slots=True)
class ReadStats:
    """What the reader skipped rather than turned into a record."""

    blank_lines: int = 0
    blank_line_numbers: list[int] = field(default_factory=list)

    def note_blank(self, line: int) -> None:
        self.blank_lines += 1
        if len(self.blank_line_numbers) < 100:
            self.blank_line_numbers.append(line)


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Caps on what one read of an input may hold, so that no input keeps the stage busy for hours.

    :param max_bytes: the most bytes the input may hold, decompressed
    :param max_records: the most records (non-blank lines, or CSV rows) it may hold
    :param blank_lines_per_record: the most blank lines per record seen so far, beyond ``free_blank_lines``:
        checked as they come, so that a gzip bomb of newlines is refused after a few thousand lines
    :param free_blank_lines: blank lines allowed whatever the number of records
    """

    max_bytes: int
    max_records: int
    blank_lines_per_record: int = 10
    free_blank_lines: int = 10_000

    def check_records(self, path: Path, records: int) -> None:
        if records > self.max_records:
            raise InputOverLimit(f"{path}: the input holds more than {self.max_records} records")

    def check_blank_lines(self, path: Path, blank_lines: int, records: int) -> None:
        if blank_lines > self.free_blank_lines + self.blank_lines_per_record * records:
            raise InputOverLimit(
                f"{path}: {blank_lines} blank lines against {records} records, over "
                f"{self.free_blank_lines} + {self.blank_lines_per_record} per record"
            )


def detect_format(path: Path, declared: str) -> RecordFormat:
    """Return the input format: the declared one, or with ``auto`` the one the file name implies."""
    if declared in RECORD_FORMATS:
        return declared  # type: ignore[return-value]
    if declared != AUTO_FORMAT:
        raise InputError(f"unknown input format {declared!r}: use one of {', '.join(INPUT_FORMATS)}")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise InputError(
        f"{path}: cannot tell the input format from the file name; pass --input-format jsonl or csv"
    )


def _valid_id(value: Any) -> TypeGuard[str | int]:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, str):
        return value.strip() != ""
    return isinstance(value, int)


class RecordReader:
    """Iterate over the records of one input file.

    Blank lines are skipped and counted in :attr:`stats`; every other line becomes exactly one
    :class:`InputRecord`, malformed or not, so that each can be accounted for downstream.

    :param path: the input file (JSONL or CSV, optionally gzip-compressed, detected by content)
    :param input_format: ``jsonl``, ``csv`` or ``auto`` (from the file name)
    :param id_field: the field that identifies a record
    :param max_record_bytes: records larger than this go to the dead letters unread
    :param line_offset: added to every reported line number (a shard's lines are a slice of a larger input)
    :param duplicate_lines: input line numbers known to repeat an earlier record's id (found by the stage in
        an earlier shard); a record whose id this reader saw before is a duplicate too. Duplicates become
        ``duplicate_id`` errors. The reader keeps a 64-bit hash and a line number per id (:class:`IdIndex`).
    :param limits: caps that end the read with :class:`InputOverLimit` (the stage's; the worker has none)
    """

    def __init__(
        self,
        path: Path,
        *,
        input_format: str = default_of("input_format"),
        id_field: str = default_of("id_field"),
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        line_offset: int = 0,
        duplicate_lines: Collection[int] = (),
        limits: InputLimits | None = None,
    ) -> None:
        self.path = path
        self.format = detect_format(path, input_format)
        self.id_field = id_field
        self.max_record_bytes = max_record_bytes
        self.line_offset = line_offset
        self.duplicate_lines = frozenset(duplicate_lines)
        self.limits = limits
        self._records = 0
        self.stats = ReadStats()
        self._first_lines = IdIndex()

    def __iter__(self) -> Iterator[InputRecord]:
        self._first_lines.clear()
        self._records = 0
        records = self._jsonl() if self.format == "jsonl" else self._csv()
        if self.limits is None:
            yield from records
            return
        for record in records:
            self._records += 1  # the blank-line cap is relative to it
            self.limits.check_records(self.path, self._records)
            yield record

    def count(self) -> int:
        """Count the records without parsing them (for progress and ETA)."""
        units = self._jsonl_lines() if self.format == "jsonl" else self._csv_rows()
        return sum(1 for unit in units if unit.record)

    def _jsonl_lines(self) -> Iterator[JsonlLine]:
        return jsonl_lines(
            self.path,
            max_record_bytes=self.max_record_bytes,
            line_offset=self.line_offset,
            max_bytes=self._max_bytes,
        )

    def _csv_rows(self) -> Iterator[CsvRow]:
        return csv_rows(
            self.path,
            max_record_bytes=self.max_record_bytes,
            line_offset=self.line_offset,
            max_bytes=self._max_bytes,
        )

    @property
    def _max_bytes(self) -> int | None:
        return self.limits.max_bytes if self.limits else None

    def _blank(self, line: int) -> None:
        self.stats.note_blank(line)
        if self.limits:
            self.limits.check_blank_lines(self.path, self.stats.blank_lines, self._records)

    def _jsonl(self) -> Iterator[InputRecord]:
        for unit in self._jsonl_lines():
            number = unit.line
            if unit.data is None:
                yield self._malformed(number, Reason.RECORD_TOO_LARGE, f"over {self.max_record_bytes} bytes")
                continue
            if unit.blank:
                self._blank(number)
                continue
            try:
                text = unit.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield self._malformed(
                    number,
                    Reason.INVALID_UTF8,
                    f"invalid UTF-8 at byte {exc.start}",
                    unit.data.decode("utf-8", "replace"),
                )
                continue
            try:
                value = strict_json.loads(text)
            except strict_json.JsonValueError as exc:
                yield self._malformed(number, Reason.MALFORMED_JSON, str(exc), text)
                continue
            if not isinstance(value, dict):
                yield self._malformed(
                    number, Reason.NOT_AN_OBJECT, f"a JSON {type(value).__name__}, not an object", text
                )
                continue
            yield self._record(number, value)

    def _csv(self) -> Iterator[InputRecord]:
        header: list[str] = []
        for unit in self._csv_rows():
            number, row, error = unit.line, unit.row, unit.error
            if unit.header:
                if error is not None:
                    raise InputError(f"{self.path}:{number}: the CSV header cannot be parsed: {error}")
                header = self._csv_header(number, row)
                continue
            if error is not None:
                reason = (
                    Reason.RECORD_TOO_LARGE
                    if "field larger than field limit" in error
                    else Reason.MALFORMED_CSV
                )
                yield self._malformed(number, reason, error)
                continue
            if unit.blank:  # every row before the header is blank
                self._blank(number)
                continue
            if any(_has_surrogates(cell) for cell in row):
                raw = ",".join(row).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield self._malformed(number, Reason.INVALID_UTF8, "invalid UTF-8 in the row", raw)
                continue
            if len(row) != len(header):
                yield self._malformed(
                    number,
                    Reason.RAGGED_ROW,
                    f"{len(row)} fields where the header has {len(header)}",
                    ",".join(row),
                )
                continue
            yield self._record(number, dict(zip(header, row, strict=True)))

    def _csv_header(self, number: int, row: list[str]) -> list[str]:
        if not row or all(not name.strip() for name in row):
            raise InputError(f"{self.path}:{number}: the CSV file has no header row")
        if any(_has_surrogates(name) for name in row):
            raise InputError(f"{self.path}:{number}: the CSV header is not valid UTF-8")
        seen: dict[str, int] = {}
        for column, name in enumerate(row, 1):
            if name in seen:  # its name may be a cell of data (a file without a header): never in a message
                raise InputError(
                    f"{self.path}:{number}: the CSV header names columns {seen[name]} and {column} alike"
                )
            seen[name] = column
        return row

    def _record(self, number: int, fields: dict[str, Any]) -> InputRecord:
        if self.id_field == LINE_IDS:  # an input without ids: the line names the record, once
            return InputRecord(line=number, fields=fields, record_id=number)
        record_id = fields.get(self.id_field)
        if not _valid_id(record_id):
            problem = "is missing" if record_id in (None, "") else "is not a string or an integer"
            return InputRecord(
                line=number,
                fields=None,
                error=Reason.MISSING_ID,
                detail=f"id field {self.id_field!r} {problem}",
                raw=json.dumps(fields, ensure_ascii=False),
            )
        first = self._first_lines.first_line(record_id, number)
        if first != number or number in self.duplicate_lines:
            where = f"the record at input line {first}" if first != number else "a record in an earlier shard"
            return InputRecord(
                line=number,
                fields=None,
                record_id=record_id,
                error=Reason.DUPLICATE_ID,
                detail=f"{where} has the same id",
                raw=json.dumps(fields, ensure_ascii=False),
            )
        return InputRecord(line=number, fields=fields, record_id=record_id)

    def _malformed(self, number: int, reason: Reason, detail: str, raw: str | None = None) -> InputRecord:
        return InputRecord(line=number, fields=None, error=reason, detail=detail, raw=raw)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
