"""The duplicates file: a shard's input lines whose record id an earlier shard already holds.

The stage finds them in its read of the whole input and stages them with the shard's data (a key of the
shard's Secret, or a file beside the staged shard), never on the pod's command line or in XCom, where a file
concatenated twice would overflow both. The worker dead-letters those lines as ``duplicate_id``.

Format: gzip-compressed ASCII, one number per line, each the gap from the previous line number (the first from
0). Line numbers are strictly increasing, so every gap is at least 1, and runs of consecutive duplicates
compress to almost nothing.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable


class DuplicatesFileError(ValueError):
    """The duplicates file is not what the stage writes."""


def encode_line_numbers(lines: Iterable[int]) -> bytes:
    """The duplicates file holding the strictly increasing input line numbers ``lines``."""
    gaps = []
    previous = 0
    for line in lines:
        if line <= previous:
            raise ValueError(f"line numbers must be positive and increasing: {line} after {previous}")
        gaps.append(b"%d\n" % (line - previous))
        previous = line
    return gzip.compress(b"".join(gaps), compresslevel=9, mtime=0)


def decode_line_numbers(data: bytes) -> list[int]:
    """The input line numbers a duplicates file holds; raise DuplicatesFileError if it is malformed."""
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DuplicatesFileError(f"not a gzip file: {exc}") from None
    lines: list[int] = []
    current = 0
    for number, gap in enumerate(text.splitlines(), 1):
        if not gap.isdigit() or gap.startswith(b"0"):
            raise DuplicatesFileError(f"line {number} is not a positive gap")
        current += int(gap)
        lines.append(current)
    return lines
