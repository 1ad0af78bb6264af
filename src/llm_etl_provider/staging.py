"""Split an input file into shards that each fit a Kubernetes Secret, keeping every line findable.

A shard is a contiguous slice of the input's physical lines, gzip-compressed, at most ``max_shard_bytes``
(a Secret holds 1 MiB). JSONL shards keep blank lines so that a shard's line ``j`` is the input's line
``j + line_offset``; CSV shards repeat the header and cut only between rows (quoted fields may span lines).
A JSONL line longer than ``max_record_bytes`` is cut to ``max_record_bytes + 1`` bytes: the worker, run with
the same limit, sends it to the dead letters as ``record_too_large`` under its own line number, and the shard
stays small. A CSV line that long fails the staging instead: cut, it could leave a quote open and swallow the
rows after it. No record content ever goes to a log or an error message.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from llm_etl_provider.worker.records import detect_format, without_bom

SECRET_LIMIT = 1 << 20
DEFAULT_SHARD_BYTES = (
    700_000  # compressed; leaves room for base64 in the API request and the Secret's metadata
)
DEFAULT_RECORD_BYTES = 256 * 1024


class StagingInputError(ValueError):
    """The input cannot be split: unreadable, not the declared format, or a header that cannot be kept."""


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


def _physical_lines(stream: IO[bytes], max_record_bytes: int) -> Iterator[bytes]:
    """Yield lines (newline kept); a line over the limit is cut to ``limit + 1`` bytes plus a newline."""
    while chunk := stream.readline(max_record_bytes + 1):
        if len(chunk) > max_record_bytes and not chunk.endswith(b"\n"):
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield chunk + b"\n"
        else:
            yield chunk if chunk.endswith(b"\n") else chunk + b"\n"


_Closed = tuple[bytes, list[tuple[int, bool]]]  # a closed shard: its gzip data and (first line, is a record)


class _ShardBuilder:
    """Compress units (lines or CSV rows) into shards that stay under the size limit, in one pass.

    The size is tracked as an upper bound: what the compressor has emitted plus what it still buffers,
    counted as if stored uncompressed. Only when that bound would pass the limit is the compressor flushed to
    learn the exact size, and the shard closed if the next unit could still overflow it.
    """

    def __init__(self, max_shard_bytes: int, header: bytes = b"") -> None:
        self.max_shard_bytes = max_shard_bytes
        self.header = header
        self._start()

    def _start(self) -> None:
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip container
        self._chunks = [self._compressor.compress(self.header)]
        self._emitted = len(self._chunks[0])
        self._buffered = len(self.header)
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
        data = b"".join(self._chunks) + self._compressor.flush()
        units = self.units
        self._start()
        return data, units

    def finish(self) -> _Closed | None:
        return self._close() if self.units else None


def check_sizes(max_shard_bytes: int, max_record_bytes: int) -> None:
    """Refuse shard and record limits that cannot work together or with a Secret."""
    if max_shard_bytes > SECRET_LIMIT:
        raise StagingInputError(f"max_shard_bytes {max_shard_bytes} is over a Secret's {SECRET_LIMIT} bytes")
    if max_record_bytes < 1 or max_record_bytes * 2 > max_shard_bytes:
        raise StagingInputError(
            f"max_record_bytes {max_record_bytes} must be between 1 and half of max_shard_bytes "
            f"{max_shard_bytes}, so that any record fits a shard"
        )


def plan_shards(
    path: Path,
    *,
    input_format: str = "auto",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    max_record_bytes: int = DEFAULT_RECORD_BYTES,
) -> Iterator[Shard]:
    """Split ``path`` into shards, in input order, reading it once in constant memory."""
    check_sizes(max_shard_bytes, max_record_bytes)
    fmt = detect_format(path, input_format)
    with path.open("rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    with cast(IO[bytes], gzip.open(path, "rb")) if compressed else path.open("rb") as stream:
        if fmt == "jsonl":
            builder = _ShardBuilder(max_shard_bytes)
            units = _jsonl_units(stream, max_record_bytes)
        else:
            header, units = _csv_units(path, stream, max_record_bytes)
            builder = _ShardBuilder(max_shard_bytes, header)
        index = 0
        try:
            for line, data, record in units:
                if (closed := builder.add(line, data, record)) is not None:
                    yield _shard(closed, index, fmt)
                    index += 1
        except (EOFError, gzip.BadGzipFile) as exc:
            raise StagingInputError(f"{path}: the input cannot be read to its end: {exc}") from None
        if (closed := builder.finish()) is not None:
            yield _shard(closed, index, fmt)


def _shard(closed: _Closed, index: int, fmt: str) -> Shard:
    data, units = closed
    first = units[0][0]
    return Shard(
        index=index,
        data=data,
        records=sum(1 for _, record in units if record),
        first_line=first,
        line_offset=first - 1 if fmt == "jsonl" else first - 2,  # CSV shards start with the header line
        input_format=fmt,
    )


def _jsonl_units(stream: IO[bytes], max_record_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    for number, line in enumerate(_physical_lines(stream, max_record_bytes), start=1):
        line = without_bom(number, line)
        yield number, line, bool(line.strip())


def _csv_units(
    path: Path, stream: IO[bytes], max_record_bytes: int
) -> tuple[bytes, Iterator[tuple[int, bytes, bool]]]:
    """Return the header's bytes and the rows as (first line, raw bytes, is a record)."""
    raw_lines = enumerate(_physical_lines(stream, max_record_bytes), start=1)
    consumed: list[tuple[int, bytes]] = []

    def text() -> Iterator[str]:
        for number, raw in raw_lines:
            raw = without_bom(number, raw)
            if len(raw.rstrip(b"\r\n")) > max_record_bytes:
                raise StagingInputError(
                    f"{path}:{number}: a CSV line over max_record_bytes ({max_record_bytes} bytes) cannot be "
                    "cut without breaking its row: raise max_record_bytes (at most half of max_shard_bytes)"
                )
            consumed.append((number, raw))
            yield raw.decode("utf-8", "surrogateescape")

    csv.field_size_limit(max_record_bytes + 2)
    reader = csv.reader(text())
    header_line, header = 0, b""
    try:
        for row in reader:
            if row:
                header_line, header = consumed[0][0], b"".join(raw for _, raw in consumed)
                consumed.clear()
                break
            consumed.clear()
    except csv.Error as exc:
        raise StagingInputError(f"{path}: the CSV header cannot be parsed: {exc}") from None
    if header and header.count(b"\n") > 1:
        raise StagingInputError(
            f"{path}:{header_line}: a CSV header spanning lines cannot be repeated per shard"
        )

    def rows() -> Iterator[tuple[int, bytes, bool]]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:
                row = ["malformed"]  # the worker reports it under its line number
            yield consumed[0][0], b"".join(raw for _, raw in consumed), bool(row)
            consumed.clear()

    return header, rows()


def read_shard(data: bytes) -> bytes:
    """Decompress a shard (for checks and tests)."""
    return gzip.GzipFile(fileobj=io.BytesIO(data)).read()
