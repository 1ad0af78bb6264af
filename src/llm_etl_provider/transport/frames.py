"""Sealed log frames: results carried over a container log without loss going unnoticed and without leaking.

The worker writes two plaintext streams of JSON lines, results and dead letters, exactly as they are to be
published; it cuts each into chunks, compresses each chunk (zlib) and seals it with AES-256-GCM. Each sealed
chunk is one log line, well under the 8 KiB at which CRI-O splits lines::

    LLMETL2 <run_id> <shard> <seq> <kind> <base64url(nonce + ciphertext + tag)>

``kind`` is ``R`` for a chunk of the results, ``D`` for a chunk of the dead letters and ``T`` for the trailer,
the last frame, whose plaintext is JSON with the counts, the frame count and the chained plaintext checksum.
Frames are numbered across both streams; a line may span frames of its stream. The reader appends each
frame's plaintext to its stream's output as it is: no per-line work. The associated data binds every frame
to the format version, run, shard, sequence number and kind, so a frame of another run or shard, a moved
frame or an edited header fails authentication. The checksum chains each frame's plaintext into the last
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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llm_etl_provider.contract.shard import validate_run_id
from llm_etl_provider.transport.exceptions import (
    DuplicateFrameError,
    FrameAuthenticationError,
    FrameGapError,
    FrameOrderError,
    MalformedFrameError,
    MissingTrailerError,
    RotatedLogError,
    TrailerMismatchError,
    TransportError,
)

try:  # the reader's fast paths, provider dependencies: the same formats, decoded 2-6x faster
    from isal import isal_zlib as _inflater
    from pybase64 import b64decode as _b64decode
except ImportError:  # the worker's image, which only writes frames
    import zlib as _inflater  # type: ignore[no-redef]
    from base64 import b64decode as _b64decode  # type: ignore[assignment]

FORMAT = "LLMETL2"
MAX_LINE_BYTES = 7900  # CRI-O splits lines at 8 KiB and containerd at 16 KiB; stay under both
KIND_RESULTS = "R"
KIND_DEAD_LETTERS = "D"
KIND_TRAILER = "T"
# the trailer summary's field naming the try of the shard's enrichment that wrote the stream
TRAILER_ATTEMPT = "attempt"
Stream = Literal["result", "dead_letter"]
_KIND_OF: dict[Stream, str] = {"result": KIND_RESULTS, "dead_letter": KIND_DEAD_LETTERS}

_NONCE_BYTES = 12
_TAG_BYTES = 16
_GENESIS = bytes(32)
_MAGIC = FORMAT.encode()
# the header only: the strict base64 decoding checks the body (a regex over 8 KB lines is slow)
_FRAME_HEADER = re.compile(
    rb"^(?:\S+ )?" + _MAGIC + rb" (?P<run>\S+) (?P<shard>\d+) (?P<seq>\d+) (?P<kind>[RDT]) (?=\S)"
)


def carries_frame(text: str) -> bool:
    """Whether a log line holds a frame, or a piece of one: such lines stay out of task logs."""
    return FORMAT in text


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
        self._buffers: dict[Stream, bytearray] = {"result": bytearray(), "dead_letter": bytearray()}
        self._chunk_bytes = chunk_bytes
        self._finished = False

    def add(self, stream: Stream, line: bytes) -> None:
        """Queue one JSON line (without its newline) for sealing."""
        if self._finished:
            raise RuntimeError("the frame stream is finished")
        if b"\n" in line:
            raise ValueError("a frame line must not contain a newline")
        buffer = self._buffers[stream]
        buffer += line
        buffer += b"\n"
        if stream == "result":
            self.state.results += 1
        else:
            self.state.dead_letters += 1
        while len(buffer) >= self._chunk_bytes:
            self._seal_from_buffer(stream, self._chunk_bytes)

    def flush(self) -> None:
        """Seal everything queued, so that :attr:`state` covers every line added."""
        for stream, buffer in self._buffers.items():
            while buffer:
                self._seal_from_buffer(stream, len(buffer))

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

    def _seal_from_buffer(self, stream: Stream, size: int) -> None:
        """Seal up to ``size`` queued bytes of ``stream`` in one frame, fewer if they overflow a log line."""
        buffer = self._buffers[stream]
        size = min(size, len(buffer))
        while True:
            chunk = bytes(buffer[:size])
            compressed = zlib.compress(chunk, 6)
            if self._line_length(len(compressed)) <= MAX_LINE_BYTES or size == 1:
                break
            size = max(1, size * MAX_LINE_BYTES // self._line_length(len(compressed)) * 9 // 10)
        del buffer[:size]
        self._chain = hashlib.sha256(self._chain + chunk).digest()
        self.state.chain = self._chain.hex()
        self.state.plaintext_bytes += len(chunk)
        self._seal(_KIND_OF[stream], compressed)

    def _line_length(self, payload_bytes: int) -> int:
        sealed = _NONCE_BYTES + payload_bytes + _TAG_BYTES
        header = f"{FORMAT} {self.run_id} {self.shard} {self.state.frames} R "
        return len(header) + 4 * ((sealed + 2) // 3) + 1

    def _seal(self, kind: str, payload: bytes) -> None:
        seq = self.state.frames
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload, associated_data(self.run_id, self.shard, seq, kind))
        line = (
            f"{FORMAT} {self.run_id} {self.shard} {seq} {kind} ".encode() + _b64encode(nonce + sealed) + b"\n"
        )
        self.emit(line)
        if kind != KIND_TRAILER:
            self.state.frames += 1


class _Frame(NamedTuple):
    run_id: str
    shard: int
    seq: int
    kind: str
    body: bytes


class FrameLines(NamedTuple):
    """What one log line adds to each output stream (JSON lines; a frame may end inside a line, which the
    next frame of its stream goes on with), and how many lines that completes."""

    results: bytes
    result_count: int
    dead_letters: bytes
    dead_letter_count: int


_NO_LINES = FrameLines(b"", 0, b"", 0)
_BATCH = 32  # frames a reader thread opens at a time (~750 KB of plaintext)


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
    """Verify and open a frame stream line by line, returning the output lines in order.

    Every failure raises a :class:`~llm_etl_provider.transport.exceptions.TransportError` naming the shard and
    frame: a gap (dropped frame), a duplicate, a reordering, a frame that does not authenticate (wrong key,
    another run or shard, altered), a log that starts past frame 0 (rotated), a missing trailer, or a trailer
    whose counts or checksum disagree with what was read.

    Reading a frame takes three steps: :meth:`parse` checks its header in stream order, :meth:`open`
    authenticates and decompresses it (no shared state: threads may open frames ahead of the reader, see
    :meth:`read`), and :meth:`accept` chains and counts it, again in stream order.

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
        self.log_bytes = 0
        self.skipped_lines = 0
        self.results = 0
        self.dead_letters = 0
        self.plaintext_bytes = 0
        self._chain = _GENESIS
        self._open_line: dict[str, bool] = {KIND_RESULTS: False, KIND_DEAD_LETTERS: False}
        self._trailer: Trailer | None = None
        self._parsed = 0  # data frames with checked headers; ahead of self.frames while threads open them
        self._trailer_parsed = False
        self._last_body: bytes | None = None

    @property
    def where(self) -> str:
        return f"shard {self.shard if self.shard is not None else '?'}"

    def feed(self, line: bytes) -> FrameLines:
        """Read one log line; return what it adds to each output stream."""
        frame = self.parse(line)
        if frame is None:
            return _NO_LINES
        return self.accept(frame, self.open(frame))

    def read(self, lines: Iterable[bytes], *, threads: int = 0) -> Iterator[FrameLines]:
        """:meth:`feed` every line, with ``threads`` threads opening frames ahead of the reader.

        Decompression releases the GIL, so it runs beside the reading, hashing and writing, which release it
        too. Frames go to the threads in batches of :data:`_BATCH` (a future per frame costs more than it
        saves); at most ``2 * threads`` batches wait, and a failure is reported for the first bad frame in
        stream order.
        """
        if threads <= 0:
            yield from map(self.feed, lines)
            return
        pending: deque[tuple[list[_Frame], Future[list[bytes]]]] = deque()
        batch: list[_Frame] = []
        with ThreadPoolExecutor(threads, thread_name_prefix="frame-open") as pool:
            for line in lines:
                try:
                    frame = self.parse(line)
                except TransportError:
                    # a frame before this line may be bad too: report the first failure in stream order
                    for frames, opened in pending:
                        self._accept_all(frames, opened.result())
                    self._accept_all(batch, self._open_all(batch))
                    raise
                if frame is None:
                    continue
                batch.append(frame)
                if len(batch) == _BATCH:
                    pending.append((batch, pool.submit(self._open_all, batch)))
                    batch = []
                    if len(pending) > 2 * threads:
                        frames, opened = pending.popleft()
                        yield from self._accept_all(frames, opened.result())
            while pending:
                frames, opened = pending.popleft()
                yield from self._accept_all(frames, opened.result())
        yield from self._accept_all(batch, self._open_all(batch))

    def _open_all(self, frames: list[_Frame]) -> list[bytes]:
        return [self.open(frame) for frame in frames]

    def _accept_all(self, frames: list[_Frame], plaintexts: list[bytes]) -> list[FrameLines]:
        return [self.accept(frame, plaintext) for frame, plaintext in zip(frames, plaintexts, strict=True)]

    def parse(self, line: bytes) -> _Frame | None:
        """Check a line's frame header in stream order; None for a line that holds no frame."""
        self.log_bytes += len(line)
        stripped = line.rstrip(b"\r\n")
        match = _FRAME_HEADER.match(stripped)
        if match is None:
            if _MAGIC in stripped:
                raise MalformedFrameError(
                    f"{self.where}: a line after frame {self._parsed - 1} holds a cut or garbled frame "
                    "(a log line split by the runtime, or an edited log)"
                )
            self.skipped_lines += 1
            return None
        frame = _Frame(
            match["run"].decode(), int(match["shard"]), int(match["seq"]), match["kind"].decode(),
            stripped[match.end() :],
        )  # fmt: skip
        self._check_identity(frame.run_id, frame.shard, frame.seq)
        if self._trailer_parsed:
            raise FrameOrderError(f"{self.where}: frame {frame.seq} ({frame.kind}) comes after the trailer")
        if frame.seq != self._parsed:
            self._out_of_order(frame.seq, frame.body)
        self._last_body = frame.body
        if frame.kind == KIND_TRAILER:
            self._trailer_parsed = True
        else:
            self._parsed += 1
        return frame

    def open(self, frame: _Frame) -> bytes:
        """Authenticate and decompress a parsed frame; return its plaintext. Touches no reader state."""
        try:
            sealed = _b64decode(frame.body, altchars=b"-_", validate=True)
            payload = self._aead.decrypt(
                sealed[:_NONCE_BYTES],
                sealed[_NONCE_BYTES:],
                associated_data(frame.run_id, frame.shard, frame.seq, frame.kind),
            )
        except (InvalidTag, ValueError):
            raise FrameAuthenticationError(
                f"{self.where}: frame {frame.seq} does not authenticate: the wrong key, a frame of another "
                "run or shard, or an altered or cut line"
            ) from None
        if frame.kind == KIND_TRAILER:
            return payload
        try:
            return _inflater.decompress(payload)
        except _inflater.error:  # type: ignore[misc]  # isal's stub types its exception class as an instance
            raise MalformedFrameError(f"{self.where}: frame {frame.seq} does not decompress") from None

    def accept(self, frame: _Frame, plaintext: bytes) -> FrameLines:
        """Take an opened frame in stream order: chain it and return what it adds to its stream."""
        if frame.kind == KIND_TRAILER:
            self._read_trailer(plaintext, frame.run_id, frame.shard)
            return _NO_LINES
        self.frames += 1
        chain = hashlib.sha256(self._chain)
        chain.update(plaintext)
        self._chain = chain.digest()
        self.plaintext_bytes += len(plaintext)
        self._open_line[frame.kind] = not plaintext.endswith(b"\n")  # the next frame of its stream goes on
        lines = plaintext.count(b"\n")
        if frame.kind == KIND_RESULTS:
            self.results += lines
            return FrameLines(plaintext, lines, b"", 0)
        self.dead_letters += lines
        return FrameLines(b"", 0, plaintext, lines)

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
        if self._parsed == 0 and seq > 0:
            raise RotatedLogError(
                f"{self.where}: the log starts at frame {seq}, not 0: the kubelet rotated the container log "
                "(10 MiB by default) and the first frames are gone; use smaller shards (max_shard_bytes)"
            )
        if seq == self._parsed - 1 and body == self._last_body:
            raise DuplicateFrameError(f"{self.where}: frame {seq} appears twice")
        if seq < self._parsed:
            raise FrameOrderError(f"{self.where}: frame {seq} comes after frame {self._parsed - 1}")
        missing = f"frames {self._parsed} to {seq - 1}"
        raise FrameGapError(f"{self.where}: {missing} are missing before frame {seq}")

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
        for kind, name in ((KIND_RESULTS, "results"), (KIND_DEAD_LETTERS, "dead_letters")):
            if self._open_line[kind]:
                wrong[f"{name}_end"] = ("a whole line", "a cut line")
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
