"""Errors of an input that cannot be read as a whole, the stage's and the worker's alike::

    InputError                     the input's format, or its CSV header, is unusable
     ├── UnreadableInput           the input cannot be opened, or read to its end (a cut gzip)
     │    └── InputOverLimit       the input passes a cap of the stage (bytes, records, blank lines)
     └── CsvLineTooLong            a CSV line over max_record_bytes, which the stage refuses

The worker exits with :attr:`InputError.exit_code` (a configuration error); the stage fails its task. A
record that cannot be read is no error: it goes to the dead letters with its reason. Messages name the file
and line, never record content.
"""

from __future__ import annotations

from llm_etl_provider.contract.codes import ExitCode


class InputError(Exception):
    """The input as a whole is unusable: its format cannot be told, or its CSV header cannot be used."""

    exit_code = ExitCode.CONFIGURATION


class UnreadableInput(InputError):
    """The input cannot be opened, or read to its end (a truncated or corrupt gzip stream)."""


class InputOverLimit(UnreadableInput):
    """The input passes one of the stage's caps (:class:`~llm_etl_provider.formats.records.InputLimits`)."""


class CsvLineTooLong(InputError):
    """A CSV line is over ``max_record_bytes``: it cannot be cut without breaking its row."""

    def __init__(self, path: object, line: int, max_record_bytes: int) -> None:
        super().__init__(
            f"{path}:{line}: a CSV line over max_record_bytes ({max_record_bytes} bytes) cannot be cut "
            "without breaking its row: raise max_record_bytes (at most half of max_shard_bytes)"
        )
        self.line = line
