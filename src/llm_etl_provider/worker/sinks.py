"""Where the worker writes results and dead letters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Protocol

from llm_etl_provider.worker.errors import ConfigurationError


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

    def close(self) -> None:
        """Flush and release the destination."""


def dump_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


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

    def close(self) -> None:
        for handle in (self._results, self._dead_letters):
            if handle is not None:
                handle.close()
