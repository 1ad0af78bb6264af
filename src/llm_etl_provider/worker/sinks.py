"""Where the worker writes results and dead letters."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Protocol

from llm_etl_provider.formats import strict_json
from llm_etl_provider.transport.frames import TRAILER_ATTEMPT, FrameWriter, WriterState
from llm_etl_provider.worker.exceptions import ConfigurationError


class OutputSink(Protocol):
    """A destination for result and dead-letter lines that can say how far it got, and resume there."""

    def open(self, resume_from: dict[str, Any] | None) -> None:
        """Start writing; from a checkpoint's position if one is given, else from scratch."""

    def write_result(self, line: dict[str, Any]) -> None:
        """Write one result line."""

    def write_dead_letter(self, line: dict[str, Any]) -> None:
        """Write one dead-letter line."""

    def position(self) -> dict[str, Any]:
        """Make everything written so far durable and return the position to resume from."""

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the output complete (only after every record is written)."""

    def close(self) -> None:
        """Flush and release the destination (complete or not)."""


def dump_line(value: dict[str, Any]) -> bytes:
    return strict_json.dumps_line(value)


class JsonlFileSink:
    """Results and dead letters as two local JSONL files.

    On resume each file is cut back to the length recorded in the checkpoint, so lines written after the last
    checkpoint (and redone now) appear once.
    """

    def __init__(self, results_path: Path, dead_letter_path: Path) -> None:
        if results_path.resolve() == dead_letter_path.resolve():
            raise ConfigurationError("results and dead letters need two different files")
        self.results_path = results_path
        self.dead_letter_path = dead_letter_path
        self._results: IO[bytes] | None = None
        self._dead_letters: IO[bytes] | None = None

    def open(self, resume_from: dict[str, Any] | None) -> None:
        offsets = resume_from or {}
        self._results = self._open(self.results_path, offsets.get("results_bytes"))
        self._dead_letters = self._open(self.dead_letter_path, offsets.get("dead_letter_bytes"))

    @staticmethod
    def _open(path: Path, offset: int | None) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        if offset is None:
            return path.open("wb")
        handle = path.open("r+b")
        if os.fstat(handle.fileno()).st_size < offset:
            handle.close()
            raise ConfigurationError(
                f"{path} is shorter than its checkpoint says ({offset} bytes): it was changed since; "
                "delete the checkpoint to start over"
            )
        handle.truncate(offset)
        handle.seek(offset)
        return handle

    def write_result(self, line: dict[str, Any]) -> None:
        assert self._results is not None, "open() the sink first"
        self._results.write(dump_line(line))

    def write_dead_letter(self, line: dict[str, Any]) -> None:
        assert self._dead_letters is not None, "open() the sink first"
        self._dead_letters.write(dump_line(line))

    def position(self) -> dict[str, Any]:
        assert self._results is not None, "open() the sink first"
        assert self._dead_letters is not None, "open() the sink first"
        for handle in (self._results, self._dead_letters):
            handle.flush()
            os.fsync(handle.fileno())
        return {"results_bytes": self._results.tell(), "dead_letter_bytes": self._dead_letters.tell()}

    def finish(self, summary: dict[str, Any]) -> None:
        self.position()

    def close(self) -> None:
        for handle in (self._results, self._dead_letters):
            if handle is not None:
                handle.close()


class FrameSink:
    """What the sealed sinks share: a :class:`FrameWriter` bound to the run, shard and key, fed result and
    dead-letter lines, and a trailer that names the try. Subclasses open the writer (:meth:`_open_writer`)
    and say where its frame lines go.

    :param key: the run's 256-bit key
    :param run_id: the run the frames are bound to
    :param shard: the shard number
    :param attempt: the try of the shard's enrichment, sealed into the trailer: extraction reads a stream
        only from the try it was written by
    """

    def __init__(self, key: bytes, run_id: str, shard: int, attempt: int) -> None:
        self._key = key
        self.run_id = run_id
        self.shard = shard
        self.attempt = attempt
        self._writer: FrameWriter | None = None

    def _open_writer(self, emit: Callable[[bytes], None], state: WriterState | None) -> None:
        self._writer = FrameWriter(self._key, self.run_id, self.shard, emit, state=state)

    def _frames(self) -> FrameWriter:
        assert self._writer is not None, "open() the sink first"
        return self._writer

    def write_result(self, line: dict[str, Any]) -> None:
        self._frames().add("result", dump_line(line)[:-1])

    def write_dead_letter(self, line: dict[str, Any]) -> None:
        self._frames().add("dead_letter", dump_line(line)[:-1])

    def _seal(self, summary: dict[str, Any]) -> None:
        """Write the trailer: the stream is complete after this."""
        self._frames().finish({**summary, TRAILER_ATTEMPT: self.attempt})


class LogFrameSink(FrameSink):
    """Results and dead letters as sealed frames on a byte stream: the container's stdout, read as its log.

    With a spool file (on a volume that outlives the container), every frame is also kept there; a restarted
    worker replays the spooled frames up to its checkpoint and goes on, so the new container's log alone holds
    the whole stream.

    :param out: where frame lines go (binary)
    :param spool_path: where frames are kept for a resume; None when the run does not checkpoint
    and the run, shard, key and try (:class:`FrameSink`)
    """

    def __init__(
        self,
        key: bytes,
        run_id: str,
        shard: int,
        attempt: int,
        out: IO[bytes],
        *,
        spool_path: Path | None = None,
    ):
        super().__init__(key, run_id, shard, attempt)
        self.out = out
        self.spool_path = spool_path
        self._spool: IO[bytes] | None = None

    def open(self, resume_from: dict[str, Any] | None) -> None:
        state: WriterState | None = None
        if self.spool_path is not None:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            self._spool = self.spool_path.open("a+b")
            offset = resume_from["spool_bytes"] if resume_from else 0
            if os.fstat(self._spool.fileno()).st_size < offset:
                raise ConfigurationError(
                    f"{self.spool_path} is shorter than its checkpoint says: "
                    "delete the checkpoint to start over"
                )
            self._spool.truncate(offset)
            self._spool.seek(0)
            while chunk := self._spool.read(1 << 16):
                self.out.write(chunk)
            self.out.flush()
        elif resume_from is not None:
            raise ConfigurationError("resuming a log-output run needs its frame spool (--spool)")
        if resume_from is not None:
            state = WriterState(**resume_from["writer"])
        self._open_writer(self._emit, state)

    def _emit(self, line: bytes) -> None:
        self.out.write(line)
        self.out.flush()
        if self._spool is not None:
            self._spool.write(line)

    def position(self) -> dict[str, Any]:
        writer = self._frames()
        writer.flush()
        spool_bytes = 0
        if self._spool is not None:
            self._spool.flush()
            os.fsync(self._spool.fileno())
            spool_bytes = self._spool.tell()
        return {"writer": asdict(writer.state), "spool_bytes": spool_bytes}

    def finish(self, summary: dict[str, Any]) -> None:
        self._seal(summary)

    def close(self) -> None:
        self.out.flush()
        if self._spool is not None:
            self._spool.close()
