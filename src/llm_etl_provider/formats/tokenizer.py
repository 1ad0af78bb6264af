"""The input's tokenizer: the one place that says where the input's lines and CSV rows begin and end.

The stage cuts its shards along the units yielded here
(:func:`llm_etl_provider.staging.cutting.plan_shards`), and
:class:`~llm_etl_provider.formats.records.RecordReader` reads a shard (the worker) or the whole input (the
stage's validation) through the same functions. A shard holds its units' ``raw`` bytes unchanged, so the
worker finds in it the same units, at the same input lines, as a read of the whole input. This module owns:

- opening the input: gzip is recognised by its content (magic ``1f 8b``), not by its name;
- JSONL lines: a line over ``max_record_bytes`` (its ``\\n`` not counted) is skipped unread; a blank line is
  valid UTF-8 that is only whitespace;
- the BOM: only the input's first line loses a UTF-8 BOM, never a later line (where a shard or a concatenated
  file begins);
- CSV rows: lines end at ``\\n`` only, a line over ``max_record_bytes`` is refused before it is buffered,
  quoted fields may span lines, a field over ``max_record_bytes``
  characters is an error (the csv module's field size limit is set here, nowhere else), the first row that is
  not blank is the header;
- line numbers: a unit's line is its first input line, counted from ``line_offset + 1``;
- the byte cap: with ``max_bytes``, reading past that many bytes (decompressed) raises
  :class:`InputOverLimit`, so that no input, a gzip bomb included, is read for longer than its cap allows.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from llm_etl_provider.formats.exceptions import CsvLineTooLong, InputOverLimit, UnreadableInput

GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_UNICODE_ONLY_SPACE = frozenset(b"\x1c\x1d\x1e\x1f")  # str.strip() removes these, bytes.strip() does not


def begins_gzip(handle: IO[bytes]) -> bool:
    """Whether the bytes at ``handle``'s position begin a gzip stream (its magic number), as the input is
    told from its content; the position is kept. The stage asks it too: of an input the object transport
    would read by byte ranges, and of each range's first line, which must not read as one."""
    position = handle.tell()
    head = handle.read(len(GZIP_MAGIC))
    handle.seek(position)
    return head == GZIP_MAGIC


class JsonlLine(NamedTuple):
    """One physical line of a JSONL input.

    :param line: its input line number
    :param raw: its bytes as in the input, for a shard; a line over the limit keeps its first
        ``max_record_bytes + 1`` bytes and a newline, which read again are over the limit again
    :param data: its bytes without the input's BOM, or None when the line is over the limit
    :param blank: whether it is valid UTF-8 and only whitespace
    """

    line: int
    raw: bytes
    data: bytes | None
    blank: bool

    @property
    def record(self) -> bool:
        """Whether the worker turns it into a record (malformed or not)."""
        return not self.blank


class CsvRow(NamedTuple):
    """One row of a CSV input, or the csv module's error where no row could be parsed.

    :param line: its first input line
    :param lines: how many physical lines it spans
    :param raw: its bytes as in the input, for a shard
    :param row: its fields (empty for a blank line or an error)
    :param error: the csv module's message when the row is malformed
    :param header: whether it is the header: the input's first row that is not blank
    """

    line: int
    lines: int
    raw: bytes
    row: list[str]
    error: str | None
    header: bool

    @property
    def blank(self) -> bool:
        return self.error is None and not self.row

    @property
    def record(self) -> bool:
        """Whether the worker turns it into a record (malformed or not)."""
        return not self.header and not self.blank


def without_bom(line_number: int, line: bytes) -> bytes:
    """The line without a UTF-8 BOM if it is the input's first; a BOM further on (a later shard's start, a
    concatenated file) stays, for the stage and the worker to read the line alike."""
    return line[len(_UTF8_BOM) :] if line_number == 1 and line.startswith(_UTF8_BOM) else line


def jsonl_lines(
    path: Path, *, max_record_bytes: int, line_offset: int = 0, max_bytes: int | None = None
) -> Iterator[JsonlLine]:
    """Yield the physical lines of a JSONL input, numbered from ``line_offset + 1``."""
    with _opened(path, max_bytes) as stream:
        number = line_offset
        while chunk := stream.readline(max_record_bytes + 1):
            number += 1
            if len(chunk) > max_record_bytes and not chunk.endswith(b"\n"):
                while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass
                yield JsonlLine(number, chunk + b"\n", None, False)
            else:
                data = without_bom(number, chunk)
                yield JsonlLine(number, chunk, data, _blank(data))


def csv_rows(
    path: Path,
    *,
    max_record_bytes: int,
    line_offset: int = 0,
    max_bytes: int | None = None,
) -> Iterator[CsvRow]:
    """Yield the rows of a CSV input, the header and blank lines included, numbered from ``line_offset + 1``.

    A line longer than ``max_record_bytes`` without the BOM and its line end raises :class:`CsvLineTooLong`
    before more than ``max_record_bytes`` of it is read: no reader (the stage's, the worker's) ever buffers a
    line beyond the limit, and a cut CSV row could swallow the rows after it.
    """
    with _opened(path, max_bytes) as stream:
        lines: Iterable[bytes] = _short_lines(stream, max_record_bytes, line_offset, path)
        consumed: list[bytes] = []

        def text() -> Iterator[str]:
            for number, raw in enumerate(lines, line_offset + 1):
                consumed.append(raw)
                yield without_bom(number, raw).decode("utf-8", "surrogateescape")

        reader = csv.reader(text())
        line = line_offset + 1
        before_header = True
        while True:
            # process-wide: set before every row, in case another reader set its own limit in between
            csv.field_size_limit(max_record_bytes)
            try:
                row, error = next(reader), None
            except StopIteration:
                return
            except csv.Error as exc:  # the rest of its last line is skipped; the next row starts after it
                row, error = [], str(exc)
            header = before_header and (error is not None or bool(row))
            before_header = before_header and not header
            yield CsvRow(line, len(consumed), b"".join(consumed), row, error, header)
            line += len(consumed)
            consumed.clear()


def _short_lines(
    stream: io.BufferedIOBase, max_record_bytes: int, line_offset: int, path: Path
) -> Iterator[bytes]:
    """Yield whole lines, raising CsvLineTooLong for one over the limit, without reading all of it."""
    number = line_offset + 1
    while line := stream.readline(max_record_bytes + 1 + len(_UTF8_BOM)):
        # only a run of "\r" before the line end can still bring an incomplete line back under the limit
        while not line.endswith(b"\n") and len(without_bom(number, line).rstrip(b"\r")) <= max_record_bytes:
            if not (more := stream.readline(max_record_bytes + 1)):
                break
            line += more
        if len(without_bom(number, line).rstrip(b"\r\n")) > max_record_bytes:
            raise CsvLineTooLong(path, number, max_record_bytes)
        yield line
        number += 1


def _blank(data: bytes) -> bool:
    """Whether the line is blank to the worker: valid UTF-8 whose ``str.strip()`` is empty."""
    stripped = data.strip()
    if not stripped:
        return True
    if stripped[0] < 0x80 and stripped[0] not in _UNICODE_ONLY_SPACE:
        return False  # its first character is not whitespace
    try:
        return not data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


class _CappedStream(io.RawIOBase):
    """Reads ``inner`` and raises InputOverLimit once more than ``limit`` bytes have been read."""

    def __init__(self, inner: io.BufferedIOBase, limit: int, path: Path) -> None:
        self.inner, self.limit, self.path, self.total = inner, limit, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self.inner.readinto(buffer)
        self.total += count
        if self.total > self.limit:
            raise InputOverLimit(f"{self.path}: the input is over {self.limit} bytes (decompressed)")
        return count


@contextmanager
def _opened(path: Path, max_bytes: int | None = None) -> Iterator[io.BufferedIOBase]:
    """Open the input, decompressing it if it is gzip; a failure to read it is an UnreadableInput."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise UnreadableInput(f"{path}: cannot open the input: {exc.strerror}") from None
    try:
        with contextlib.ExitStack() as stack:
            stream: io.BufferedIOBase = raw
            if begins_gzip(raw):
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            if max_bytes is not None:
                stream = io.BufferedReader(_CappedStream(stream, max_bytes, path), 1 << 16)
            yield stream
    except (EOFError, OSError, zlib.error) as exc:
        raise UnreadableInput(f"{path}: the input cannot be read to its end: {exc}") from None
    finally:
        raw.close()
