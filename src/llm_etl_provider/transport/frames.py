"""Sealed log frames: results carried over a container log without loss going unnoticed and without leaking.

The worker turns its output into one logical plaintext stream of tagged lines (``R`` result, ``D`` dead
letter, each ``tag + JSON + "\\n"``), cuts it into chunks, compresses each chunk (zlib) and seals it with
AES-256-GCM. Each sealed chunk is one log line, well under the 8 KiB at which CRI-O splits lines::

    LLMETL1 <run_id> <shard> <seq> <kind> <base64url(nonce + ciphertext + tag)>

``kind`` is ``D`` for data and ``T`` for the trailer, the last frame, whose plaintext is JSON with the counts,
the frame count and the chained plaintext checksum. The associated data binds every frame to the format
version, run, shard, sequence number and kind, so a frame of another run or shard, a moved frame or an edited
header fails authentication. The checksum chains each frame's plaintext into the last
(``chain = sha256(chain + plaintext)``), so a writer can resume from a checkpoint without rereading its
output.

Anything before the magic on a line (the Kubernetes log timestamp) is ignored, and lines without the magic
(progress, warnings) are skipped by the reader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llm_etl_provider.transport.errors import (
    DuplicateFrameError,
    FrameAuthenticationError,
    FrameGapError,
    FrameOrderError,
    MalformedFrameError,
    MissingTrailerError,
    RotatedLogError,
    TrailerMismatchError,
)

FORMAT = "LLMETL1"
MAX_LINE_BYTES = 7900  # CRI-O splits lines at 8 KiB and containerd at 16 KiB; stay under both
KIND_DATA = "D"
KIND_TRAILER = "T"
STREAM_RESULT = b"R"
STREAM_DEAD_LETTER = b"D"
Stream = Literal["result", "dead_letter"]

_NONCE_BYTES = 12
_TAG_BYTES = 16
_GENESIS = bytes(32)
_RUN_ID = re.compile(r"[A-Za-z0-9._:+\-]{1,200}")
_FRAME_LINE = re.compile(
    rb"^(?:\S+ )?"
    + FORMAT.encode()
    + rb" (?P<run>\S+) (?P<shard>\d+) (?P<seq>\d+) (?P<kind>[DT]) (?P<body>[A-Za-z0-9_\-]+=*)$"
)


def carries_frame(text: str) -> bool:
    """Whether a log line holds a frame, or a piece of one: such lines stay out of task logs."""
    return FORMAT in text


def validate_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r} is not usable in a frame: use 1-200 letters, digits and . _ : + -"
        )
    return run_id


def associated_data(run_id: str, shard: int, seq: int, kind: str) -> bytes:
    return f"{FORMAT}|{run_id}|{shard}|{seq}|{kind}".encode()


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data)


@dataclass
class WriterState:
    """Where a frame writer stands; saved in checkpoints so a restarted writer continues the same stream."""

    frames: int = 0
    chain: str = _GENESIS.hex()
    plaintext_bytes: int = 0
    results: int = 0
    dead_letters: int = 0


class FrameWriter:
    """Seal tagged output lines into frames and pass each frame line to ``emit``.

    :param key: the run's 256-bit AES key
    :param run_id: the run the frames belong to
    :param shard: the shard number within the run
    :param emit: receives each frame as one line of bytes, newline included
    :param state: where to continue from (a checkpoint's), or None for a new stream
    """

    def __init__(
        self,
        key: bytes,
        run_id: str,
        shard: int,
        emit: Callable[[bytes], None],
        *,
        state: WriterState | None = None,
        chunk_bytes: int = 24_000,
    ) -> None:
        if len(key) != 32:
            raise ValueError("the frame key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self.run_id = validate_run_id(run_id)
        self.shard = shard
        self.emit = emit
        self.state = state or WriterState()
        self._chain = bytes.fromhex(self.state.chain)
        self._buffer = bytearray()
        self._chunk_bytes = chunk_bytes
        self._finished = False

    def add(self, stream: Stream, line: bytes) -> None:
        """Queue one JSON line (without its newline) for sealing."""
        if self._finished:
            raise RuntimeError("the frame stream is finished")
        if b"\n" in line:
            raise ValueError("a frame line must not contain a newline")
        tag = STREAM_RESULT if stream == "result" else STREAM_DEAD_LETTER
        self._buffer += tag + line + b"\n"
        if stream == "result":
            self.state.results += 1
        else:
            self.state.dead_letters += 1
        while len(self._buffer) >= self._chunk_bytes:
            self._seal_from_buffer(self._chunk_bytes)

    def flush(self) -> None:
        """Seal everything queued, so that :attr:`state` covers every line added."""
        while self._buffer:
            self._seal_from_buffer(len(self._buffer))

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Seal what is queued and write the trailer; the stream is complete after this."""
        self.flush()
        trailer = {
            "format": FORMAT,
            "frames": self.state.frames,
            "results": self.state.results,
            "dead_letters": self.state.dead_letters,
            "plaintext_bytes": self.state.plaintext_bytes,
            "plaintext_chain_sha256": self._chain.hex(),
            "summary": summary or {},
        }
        self._seal(KIND_TRAILER, json.dumps(trailer, sort_keys=True).encode())
        self._finished = True

    def _seal_from_buffer(self, size: int) -> None:
        """Seal up to ``size`` queued bytes as one data frame, fewer if they do not fit one log line."""
        size = min(size, len(self._buffer))
        while True:
            chunk = bytes(self._buffer[:size])
            compressed = zlib.compress(chunk, 6)
            if self._line_length(len(compressed)) <= MAX_LINE_BYTES or size == 1:
                break
            size = max(1, size * MAX_LINE_BYTES // self._line_length(len(compressed)) * 9 // 10)
        del self._buffer[:size]
        self._chain = hashlib.sha256(self._chain + chunk).digest()
        self.state.chain = self._chain.hex()
        self.state.plaintext_bytes += len(chunk)
        self._seal(KIND_DATA, compressed)

    def _line_length(self, payload_bytes: int) -> int:
        sealed = _NONCE_BYTES + payload_bytes + _TAG_BYTES
        header = f"{FORMAT} {self.run_id} {self.shard} {self.state.frames} D "
        return len(header) + 4 * ((sealed + 2) // 3) + 1

    def _seal(self, kind: str, payload: bytes) -> None:
        seq = self.state.frames
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload, associated_data(self.run_id, self.shard, seq, kind))
        line = (
            f"{FORMAT} {self.run_id} {self.shard} {seq} {kind} ".encode() + _b64encode(nonce + sealed) + b"\n"
        )
        self.emit(line)
        if kind == KIND_DATA:
            self.state.frames += 1


@dataclass
class Trailer:
    """The verified trailer of a frame stream."""

    run_id: str
    shard: int
    frames: int
    results: int
    dead_letters: int
    plaintext_bytes: int
    plaintext_chain_sha256: str
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrameReader:
    """Verify and open a frame stream line by line, yielding the output lines in order.

    Every failure raises a :class:`~llm_etl_provider.transport.errors.TransportError` naming the shard and
    frame: a gap (dropped frame), a duplicate, a reordering, a frame that does not authenticate (wrong key,
    another run or shard, altered), a log that starts past frame 0 (rotated), a missing trailer, or a trailer
    whose counts or checksum disagree with what was read.

    :param key: the run's key
    :param run_id: the run the frames must belong to; None accepts the first frame's run
    :param shard: the shard the frames must belong to; None accepts the first frame's shard
    """

    def __init__(self, key: bytes, *, run_id: str | None = None, shard: int | None = None) -> None:
        if len(key) != 32:
            raise ValueError("the frame key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self.run_id = run_id
        self.shard = shard
        self.frames = 0
        self.skipped_lines = 0
        self.results = 0
        self.dead_letters = 0
        self.plaintext_bytes = 0
        self._chain = _GENESIS
        self._partial = bytearray()
        self._trailer: Trailer | None = None
        self._last_line: bytes | None = None

    @property
    def where(self) -> str:
        return f"shard {self.shard if self.shard is not None else '?'}"

    def feed(self, line: bytes) -> Iterator[tuple[Stream, bytes]]:
        """Read one log line; yield the (stream, JSON line) items completed by it."""
        stripped = line.rstrip(b"\r\n")
        match = _FRAME_LINE.match(stripped)
        if match is None:
            if FORMAT.encode() in stripped:
                raise MalformedFrameError(
                    f"{self.where}: a line after frame {self.frames - 1} holds a cut or garbled frame "
                    "(a log line split by the runtime, or an edited log)"
                )
            self.skipped_lines += 1
            return
        run_id, shard = match["run"].decode(), int(match["shard"])
        seq, kind = int(match["seq"]), match["kind"].decode()
        self._check_identity(run_id, shard, seq)
        body = match["body"]
        if self._trailer is not None:
            raise FrameOrderError(f"{self.where}: frame {seq} ({kind}) comes after the trailer")
        if seq != self.frames:
            self._out_of_order(seq, body)
        try:
            sealed = base64.urlsafe_b64decode(body)
            payload = self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated_data(run_id, shard, seq, kind)
            )
        except (InvalidTag, ValueError):
            raise FrameAuthenticationError(
                f"{self.where}: frame {seq} does not authenticate: the wrong key, a frame of another run or "
                "shard, or an altered or cut line"
            ) from None
        self._last_line = body
        if kind == KIND_TRAILER:
            self._read_trailer(payload, run_id, shard)
            return
        try:
            chunk = zlib.decompress(payload)
        except zlib.error:
            raise MalformedFrameError(f"{self.where}: frame {seq} does not decompress") from None
        self.frames += 1
        self._chain = hashlib.sha256(self._chain + chunk).digest()
        self.plaintext_bytes += len(chunk)
        self._partial += chunk
        yield from self._complete_lines(seq)

    def _check_identity(self, run_id: str, shard: int, seq: int) -> None:
        if self.run_id is None:
            self.run_id = run_id
        if self.shard is None:
            self.shard = shard
        if run_id != self.run_id or shard != self.shard:
            raise FrameAuthenticationError(
                f"{self.where}: frame {seq} belongs to run {run_id!r} shard {shard}, not run {self.run_id!r} "
                f"shard {self.shard}: a replayed or mixed-up log"
            )

    def _out_of_order(self, seq: int, body: bytes) -> None:
        if self.frames == 0 and seq > 0:
            raise RotatedLogError(
                f"{self.where}: the log starts at frame {seq}, not 0: the kubelet rotated the container log "
                "(10 MiB by default) and the first frames are gone; use the direct object-storage mode or "
                "smaller shards"
            )
        if seq == self.frames - 1 and body == self._last_line:
            raise DuplicateFrameError(f"{self.where}: frame {seq} appears twice")
        if seq < self.frames:
            raise FrameOrderError(f"{self.where}: frame {seq} comes after frame {self.frames - 1}")
        raise FrameGapError(f"{self.where}: frames {self.frames} to {seq - 1} are missing before frame {seq}")

    def _complete_lines(self, seq: int) -> Iterator[tuple[Stream, bytes]]:
        start = 0
        while (end := self._partial.find(b"\n", start)) >= 0:
            item = bytes(self._partial[start:end])
            start = end + 1
            tag, body = item[:1], item[1:]
            if tag == STREAM_RESULT:
                self.results += 1
                yield "result", body
            elif tag == STREAM_DEAD_LETTER:
                self.dead_letters += 1
                yield "dead_letter", body
            else:
                raise MalformedFrameError(f"{self.where}: frame {seq} holds a line of unknown stream {tag!r}")
        del self._partial[:start]

    def _read_trailer(self, payload: bytes, run_id: str, shard: int) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            raise MalformedFrameError(f"{self.where}: the trailer is not JSON") from None
        expected = {
            "frames": self.frames,
            "results": self.results,
            "dead_letters": self.dead_letters,
            "plaintext_bytes": self.plaintext_bytes,
            "plaintext_chain_sha256": self._chain.hex(),
        }
        wrong = {k: (data.get(k), v) for k, v in expected.items() if data.get(k) != v}
        if self._partial:
            wrong["incomplete_line_bytes"] = (0, len(self._partial))
        if wrong:
            details = ", ".join(f"{k}: trailer {t}, read {r}" for k, (t, r) in wrong.items())
            raise TrailerMismatchError(
                f"{self.where}: the trailer disagrees with the frames read ({details})"
            )
        self._trailer = Trailer(
            run_id=run_id,
            shard=shard,
            frames=self.frames,
            results=self.results,
            dead_letters=self.dead_letters,
            plaintext_bytes=self.plaintext_bytes,
            plaintext_chain_sha256=self._chain.hex(),
            summary=data.get("summary") or {},
        )

    def finish(self) -> Trailer:
        """Return the trailer once the stream has ended; raise if it never came."""
        if self._trailer is None:
            if self.frames == 0:
                raise MissingTrailerError(
                    f"{self.where}: the log holds no frame at all ({self.skipped_lines} other lines): the "
                    "worker did not run with --output log, failed before writing, or the kubelet rotated "
                    "the container log and its frames are gone"
                )
            raise MissingTrailerError(
                f"{self.where}: the log ends after frame {self.frames - 1} without a trailer: the worker did "
                "not finish, or the log was cut"
            )
        return self._trailer
