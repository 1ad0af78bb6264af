"""Split an input file into shards that each fit a Kubernetes Secret, keeping every line findable.

A shard is a contiguous slice of the input's units, gzip-compressed, at most ``max_shard_bytes`` (a Secret
holds 1 MiB). The units are those of :mod:`llm_etl_provider.formats.tokenizer`, which the worker reads the
shard with: JSONL physical lines, or CSV rows (quoted fields may span lines). A shard holds each unit's bytes
unchanged, so that the worker finds the same records at the same input lines as a read of the whole input.
JSONL shards keep blank lines so that a shard's line ``j`` is the input's line ``j + line_offset``; CSV
shards repeat the header (the first also holds the blank lines before it) and cut only between rows.
A JSONL line longer than ``max_record_bytes`` is cut to ``max_record_bytes + 1`` bytes: the worker, run with
the same limit, sends it to the dead letters as ``record_too_large`` under its own line number, and the shard
stays small. A CSV line that long fails the staging instead: cut, it could leave a quote open and swallow the
rows after it. No record content ever goes to a log or an error message.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llm_etl_provider.contract.invocation import DEFAULT_MAX_RECORD_BYTES, default_of
from llm_etl_provider.exceptions import StagingInputError
from llm_etl_provider.formats.exceptions import CsvLineTooLong, UnreadableInput
from llm_etl_provider.formats.records import detect_format
from llm_etl_provider.formats.tokenizer import (
    CsvRow,
    begins_gzip,
    csv_rows,
    jsonl_lines,
    without_bom,
)

SECRET_LIMIT = 1 << 20  # the largest max_shard_bytes: what a Secret holds
DEFAULT_SHARD_BYTES = (
    700_000  # compressed; leaves room for base64 in the API request and the Secret's metadata
)
# Local execution stages each shard as a file: its size bounds no API object, only how much one worker
# process enriches before the next starts (each start loads the worker and waits out a tail of requests)
LOCAL_SHARD_LIMIT = 1 << 30
DEFAULT_LOCAL_SHARD_BYTES = 32 << 20  # compressed: ~100,000-300,000 records of a few hundred bytes
SECRET_COMPRESSION = 6  # gzip's level for a Secret's shard: its size decides how many pods a run takes
LOCAL_COMPRESSION = 1  # a local file's: written and read once on the same machine, speed over size
# The stage's caps on one input (StageInputOperator's max_input_bytes and max_input_records)
DEFAULT_MAX_INPUT_BYTES = 16 << 30  # decompressed
DEFAULT_MAX_INPUT_RECORDS = 50_000_000
# The stage's caps on one run (max_shards, max_staged_bytes): Airflow's max_map_length; etcd's room
DEFAULT_MAX_SHARDS = 1000
DEFAULT_MAX_STAGED_BYTES = 512 << 20


@dataclass(frozen=True)
class Shard:
    """One shard of the input.

    :param index: 0-based shard number
    :param data: the shard file, gzip-compressed (JSONL or CSV, as the input)
    :param records: the non-blank lines (JSONL) or rows (CSV) it holds
    :param first_line: the input line its first record line comes from
    :param line_offset: what the worker adds to a shard line number to get the input line number
    :param input_format: ``jsonl`` or ``csv``
    """

    index: int
    data: bytes
    records: int
    first_line: int
    line_offset: int
    input_format: str


_Closed = tuple[bytes, list[tuple[int, bool]], int]  # a closed shard: its gzip data, units, prefix lines


class _ShardBuilder:
    """Compress units (lines or CSV rows) into shards that stay under the size limit, in one pass.

    Each shard begins with a prefix: ``first_prefix`` for the first (a CSV input's lines up to its header),
    ``prefix`` for the others (the CSV header again). The size is tracked as an upper bound: what the
    compressor has emitted plus what it still buffers, counted as if stored uncompressed. Only when that bound
    would pass the limit is the compressor flushed to learn the exact size, and the shard closed if the next
    unit could still overflow it.
    """

    def __init__(
        self,
        max_shard_bytes: int,
        first_prefix: bytes = b"",
        prefix: bytes = b"",
        *,
        level: int = SECRET_COMPRESSION,
    ) -> None:
        self.max_shard_bytes = max_shard_bytes
        self.prefix = prefix
        self.level = level
        self._start(first_prefix)

    def _start(self, prefix: bytes) -> None:
        self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # wbits 31: a gzip container
        self._chunks = [self._compressor.compress(prefix)]
        self._emitted = len(self._chunks[0])
        self._buffered = len(prefix)
        self._prefix_lines = prefix.count(b"\n")
        self.units: list[tuple[int, bool]] = []  # (first input line, holds a record)

    @staticmethod
    def _bound(size: int) -> int:
        return size + (size >> 10) + 64  # stored blocks and the gzip trailer

    def add(self, line: int, data: bytes, record: bool) -> _Closed | None:
        """Add a unit; return the shard it closed, if any (the unit then opens the next one)."""
        closed = None
        if self.units and self._emitted + self._bound(self._buffered + len(data)) > self.max_shard_bytes:
            self._flush()
            if self._emitted + self._bound(len(data)) > self.max_shard_bytes:
                closed = self._close()
        self._chunks.append(self._compressor.compress(data))
        self._emitted += len(self._chunks[-1])
        self._buffered += len(data)
        self.units.append((line, record))
        return closed

    def _flush(self) -> None:
        self._chunks.append(self._compressor.flush(zlib.Z_SYNC_FLUSH))
        self._emitted += len(self._chunks[-1])
        self._buffered = 0

    def _close(self) -> _Closed:
        closed = b"".join(self._chunks) + self._compressor.flush(), self.units, self._prefix_lines
        self._start(self.prefix)
        return closed

    def finish(self) -> _Closed | None:
        return self._close() if self.units else None


def largest_record(max_shard_bytes: int) -> int:
    """The largest ``max_record_bytes`` that a shard size allows: half of it, so that any record fits a
    shard."""
    return max_shard_bytes // 2


def check_sizes(max_shard_bytes: int, max_record_bytes: int, *, limit: int = SECRET_LIMIT) -> None:
    """Refuse shard and record limits that cannot work together or with a Secret (``limit``: what holds a
    shard, :data:`LOCAL_SHARD_LIMIT` for a local file)."""
    if max_shard_bytes > limit:
        holder = "a Secret's" if limit == SECRET_LIMIT else "a local shard's"
        raise StagingInputError(f"max_shard_bytes {max_shard_bytes} is over {holder} {limit} bytes")
    if not 1 <= max_record_bytes <= largest_record(max_shard_bytes):
        raise StagingInputError(
            f"max_record_bytes {max_record_bytes} must be between 1 and half of max_shard_bytes "
            f"{max_shard_bytes}, so that any record fits a shard"
        )


def plan_shards(
    path: Path,
    *,
    input_format: str = default_of("input_format"),
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    limit: int = SECRET_LIMIT,
    level: int = SECRET_COMPRESSION,
) -> Iterator[Shard]:
    """Split ``path`` into shards, in input order, reading it once in constant memory (``limit``: the
    largest ``max_shard_bytes``, :func:`check_sizes`; ``level``: gzip's, :data:`LOCAL_COMPRESSION` where
    speed matters more than size)."""
    check_sizes(max_shard_bytes, max_record_bytes, limit=limit)
    fmt = detect_format(path, input_format)
    index = 0
    try:
        if fmt == "jsonl":
            builder = _ShardBuilder(max_shard_bytes, level=level)
            units: Iterator[tuple[int, bytes, bool]] = (
                (line.line, line.raw, line.record)
                for line in jsonl_lines(path, max_record_bytes=max_record_bytes)
            )
        else:
            rows = csv_rows(path, max_record_bytes=max_record_bytes)
            builder, units = _csv_units(path, max_shard_bytes, rows, level)
        for line, data, record in units:
            if (closed := builder.add(line, data, record)) is not None:
                yield _shard(closed, index, fmt)
                index += 1
    except UnreadableInput as exc:
        raise StagingInputError(str(exc)) from None
    except CsvLineTooLong as exc:
        raise StagingInputError(str(exc)) from None
    if (closed := builder.finish()) is not None:
        yield _shard(closed, index, fmt)


def _shard(closed: _Closed, index: int, fmt: str) -> Shard:
    data, units, prefix_lines = closed
    first = units[0][0]
    return Shard(
        index=index,
        data=data,
        records=sum(1 for _, record in units if record),
        first_line=first,
        line_offset=first - 1 - prefix_lines,  # the worker counts the prefix's lines too
        input_format=fmt,
    )


def _csv_units(
    path: Path, max_shard_bytes: int, rows: Iterator[CsvRow], level: int
) -> tuple[_ShardBuilder, Iterator[tuple[int, bytes, bool]]]:
    """Read up to the header; return the builder and the rows after it as (first line, raw bytes, record).

    The first shard begins with the input's lines up to the header as they are (the worker of a shard at the
    input's start strips the BOM, and counts the blank lines); the others repeat the header without the BOM.
    """
    before: list[bytes] = []
    header = None
    for row in rows:
        before.append(row.raw)
        if row.header:
            header = row
            break
    if header is None:  # blank lines only: nothing to stage
        return _ShardBuilder(max_shard_bytes, level=level), iter(())
    builder = _ShardBuilder(max_shard_bytes, b"".join(before), _repeatable_header(path, header), level=level)
    return builder, ((row.line, row.raw, row.record) for row in rows)


def _repeatable_header(path: Path, header: CsvRow) -> bytes:
    """The CSV ``header`` as the shards after the first repeat it (without its BOM); StagingInputError
    where no shard could: a header that cannot be parsed, or one that spans lines."""
    if header.error is not None:
        raise StagingInputError(f"{path}: the CSV header cannot be parsed: {header.error}")
    if header.lines > 1:
        raise StagingInputError(
            f"{path}:{header.line}: a CSV header spanning lines cannot be repeated per shard"
        )
    return without_bom(header.line, header.raw)


@dataclass(frozen=True)
class ByteRange:
    """One shard of the ``object`` transport: a line-aligned byte range of the (uncompressed) input, read by
    its pod straight from the store.

    :param index: 0-based shard number
    :param start: its first byte
    :param end: the byte after its last
    :param first_line: the input line its first byte starts
    :param prefix: what the worker reads before the range: a CSV input's header, for every range but the first
    :param row_groups: a Parquet input's range: the row groups [first, stop) it holds (whole)
    :param tail: a Parquet input's range: where the file's footer starts, which the worker reads too
    :param object_size: a Parquet input's range: the file's size (its footer ends there)
    :param expanded: what its worker writes beside the download: a Parquet range's rows as JSON lines
    """

    index: int
    start: int
    end: int
    first_line: int
    prefix: bytes = b""
    row_groups: tuple[int, int] | None = None
    tail: int | None = None
    object_size: int | None = None
    expanded: int = 0

    @property
    def line_offset(self) -> int:
        """What the worker adds to a line number of ``prefix`` + range to get the input line number."""
        return self.first_line - 1 - self.prefix.count(b"\n")


def plan_ranges(path: Path, *, input_format: str, pods: int, max_record_bytes: int) -> list[ByteRange]:
    """Cut the uncompressed input ``path`` into at most ``pods`` ranges of about equal size, each starting
    at a unit (a JSONL line; a CSV row, whose quoted fields may span lines) so that its worker reads the same
    records at the same input lines as a read of the whole input. Reads the input once more for CSV."""
    size = path.stat().st_size
    targets = [size * k // pods for k in range(1, pods)]
    if input_format == "jsonl":
        cuts = _line_starts_after(path, targets)
        lines = _lines_before(path, cuts)
        header = b""
    else:
        cuts, lines, header = _csv_row_starts_after(path, targets, max_record_bytes)
    starts = [0, *cuts]
    ends = [*cuts, size]
    first_lines = [1, *(n + 1 for n in lines)]
    return [
        ByteRange(index, start, end, first, header if index else b"")
        for index, (start, end, first) in enumerate(zip(starts, ends, first_lines, strict=True))
    ]


def _line_starts_after(path: Path, targets: list[int]) -> list[int]:
    """For each target offset, the first line start at or after it (distinct, inside the file) where the
    line does not begin with gzip's magic bytes: its worker would take such a range for a gzip stream."""
    size = path.stat().st_size
    cuts: list[int] = []
    with path.open("rb") as handle:

        def line_start(offset: int) -> int:
            """The first line start at or after ``offset`` (``size`` if none)."""
            handle.seek(offset - 1)
            position = offset - 1
            while chunk := handle.read(1 << 16):
                newline = chunk.find(b"\n")
                if newline >= 0:
                    return position + newline + 1
                position += len(chunk)
            return size

        def begins_like_gzip(offset: int) -> bool:
            handle.seek(offset)
            return begins_gzip(handle)

        for target in targets:
            position = line_start(max(target, cuts[-1] + 1 if cuts else 1))
            while position < size and begins_like_gzip(position):
                position = line_start(position + 1)
            if position >= size:
                break
            cuts.append(position)
    return cuts


def _lines_before(path: Path, offsets: list[int]) -> list[int]:
    """How many newlines come before each of the sorted ``offsets``."""
    counts: list[int] = []
    seen = 0
    position = 0
    with path.open("rb") as handle:
        for offset in offsets:
            while position < offset:
                chunk = handle.read(min(1 << 20, offset - position))
                seen += chunk.count(b"\n")
                position += len(chunk)
            counts.append(seen)
    return counts


def _csv_row_starts_after(
    path: Path, targets: list[int], max_record_bytes: int
) -> tuple[list[int], list[int], bytes]:
    """For each target offset, the first CSV row start at or after it and the lines before it; and the
    header (without its BOM) that the ranges after the first read before theirs."""
    cuts: list[int] = []
    lines: list[int] = []
    header = b""
    position = 0
    pending = iter(targets)
    target = next(pending, None)
    try:
        for row in csv_rows(path, max_record_bytes=max_record_bytes):
            if header and target is not None and position >= target:  # this row starts at `position`
                cuts.append(position)
                lines.append(row.line - 1)
                while target is not None and target <= position:
                    target = next(pending, None)
            if row.header:
                header = _repeatable_header(path, row)
            position += len(row.raw)
    except UnreadableInput as exc:
        raise StagingInputError(str(exc)) from None
    return cuts, lines, header
