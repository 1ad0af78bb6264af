"""Remember the first input line of every record id, in a few dozen bytes an id."""

from __future__ import annotations

import hashlib
from array import array

_MIN_SLOTS = 1024


def id_hash(record_id: str | int) -> int:
    """A record id's 64-bit BLAKE2b hash, never 0 (an empty slot). ``7`` and ``"7"`` are the same id."""
    digest = hashlib.blake2b(str(record_id).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class IdIndex:
    """The line where each record id was first seen.

    An open-addressing table over two flat arrays (the id's hash, its line), grown at three quarters full:
    16 bytes a slot, 21 to 43 bytes an id, where a dict of hashes to lines takes about 150. Two ids share a
    64-bit hash with odds of about n²/2⁶⁵ (1 in 37 million for a million ids); the later one would then be
    dead-lettered as a duplicate, not lost.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._hashes = array("Q", bytes(8 * _MIN_SLOTS))
        self._lines = array("q", bytes(8 * _MIN_SLOTS))  # signed: a line offset may be negative
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """The memory the table's arrays take."""
        return (len(self._hashes) + len(self._lines)) * 8

    def first_line(self, record_id: str | int, line: int) -> int:
        """Return the line where ``record_id`` was first seen; a new id is recorded as seen at ``line``."""
        key = id_hash(record_id)
        slot = _slot(self._hashes, key)
        if self._hashes[slot]:
            return self._lines[slot]
        self._hashes[slot] = key
        self._lines[slot] = line
        self._size += 1
        if self._size * 4 > len(self._hashes) * 3:
            self._grow()
        return line

    def _grow(self) -> None:
        slots = len(self._hashes) * 2
        hashes = array("Q", bytes(8 * slots))
        lines = array("q", bytes(8 * slots))
        for key, line in zip(self._hashes, self._lines, strict=True):
            if key:
                slot = _slot(hashes, key)
                hashes[slot] = key
                lines[slot] = line
        self._hashes, self._lines = hashes, lines


def _slot(hashes: array[int], key: int) -> int:
    """The slot holding ``key``, or the empty one where it goes (linear probing; the table is never full)."""
    mask = len(hashes) - 1
    slot = key & mask
    while (found := hashes[slot]) and found != key:
        slot = (slot + 1) & mask
    return slot
