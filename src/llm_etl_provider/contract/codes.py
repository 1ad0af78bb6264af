"""The worker's exit codes and dead-letter reasons: what the pod reports and what every reader of it maps.

The worker exits with an :class:`ExitCode`; the operators map each to an Airflow outcome (retry, or fail at
once where a retry would meet the same input) through :attr:`ExitCode.retryable`. Every record that does not
become a result becomes a dead letter with a :class:`DeadLetterReason`.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """How the worker (or the pod's model loader) ended."""

    OK = 0
    FAILURE = 1
    CONFIGURATION = 2
    SERVER_UNAVAILABLE = 3
    DEAD_LETTER_THRESHOLD = 4
    MODEL_LOAD = 5
    HEARTBEAT = 6
    STOPPED = 143  # 128 + SIGTERM, as a shell reports a process the signal ended

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]

    @property
    def retryable(self) -> bool:
        """Whether another try may end otherwise: not when the input or the settings are the cause."""
        return self not in (ExitCode.CONFIGURATION, ExitCode.DEAD_LETTER_THRESHOLD)

    @classmethod
    def describe(cls, code: int) -> str:
        """``code``'s meaning, for any integer (a crash may exit with a code of its own)."""
        try:
            return cls(code).meaning
        except ValueError:
            return "an unexpected failure"


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.FAILURE: "unexpected failure",
    ExitCode.CONFIGURATION: "bad configuration or unusable input",
    ExitCode.SERVER_UNAVAILABLE: (
        "the LLM server was not ready in time (`--ready-timeout`), or went away mid-run"
    ),
    ExitCode.DEAD_LETTER_THRESHOLD: "more dead letters than the threshold allows (all outputs are written)",
    ExitCode.MODEL_LOAD: "the model could not be fetched, or its checksum does not match",
    ExitCode.HEARTBEAT: (
        "the worker could not touch its heartbeat file (its work volume full or gone); what was written is "
        "checkpointed"
    ),
    ExitCode.STOPPED: "stopped by SIGTERM (a pod deleted, a node drained); what was written is checkpointed",
}


class DeadLetterReason(enum.StrEnum):
    """Why a record went to the dead letters (the ``reason`` of its line)."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_UTF8 = "invalid_utf8"
    RECORD_TOO_LARGE = "record_too_large"
    RAGGED_ROW = "ragged_row"
    MALFORMED_CSV = "malformed_csv"
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    MISSING_FIELD = "missing_field"
    INVALID_OUTPUT = "invalid_output"
    LLM_REJECTED = "llm_rejected"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    CONNECTION_ERROR = "connection_error"
    BAD_RESPONSE = "bad_response"

    @property
    def meaning(self) -> str:
        return _REASONS[self]


_REASONS = {
    DeadLetterReason.MALFORMED_JSON: (
        "the line is not strict JSON (RFC 8259): NaN or Infinity, a repeated key, a lone surrogate, "
        "a number beyond a double or over 4,300 digits, nesting over 64 levels, or text after the value"
    ),
    DeadLetterReason.NOT_AN_OBJECT: "the line is JSON, but not an object",
    DeadLetterReason.INVALID_UTF8: "the line or row is not valid UTF-8",
    DeadLetterReason.RECORD_TOO_LARGE: "the record is longer than `--max-record-bytes`",
    DeadLetterReason.RAGGED_ROW: "the CSV row has another number of fields than the header",
    DeadLetterReason.MALFORMED_CSV: "the CSV row cannot be parsed",
    DeadLetterReason.MISSING_ID: "the id field is missing, empty, or not a string or an integer",
    DeadLetterReason.DUPLICATE_ID: "an earlier record, in this shard or an earlier one, has the same id",
    DeadLetterReason.MISSING_FIELD: "a field the prompt template needs is missing or empty",
    DeadLetterReason.INVALID_OUTPUT: "every answer was cut, not JSON, or not valid against the task's schema",
    DeadLetterReason.LLM_REJECTED: "the server refused the request (a 4xx); it is never retried",
    DeadLetterReason.SERVER_ERROR: "the server answered 5xx (503: queue full) to every attempt",
    DeadLetterReason.TIMEOUT: "no answer within `--request-timeout` to every attempt",
    DeadLetterReason.CONNECT_ERROR: "the server could not be reached on every attempt",
    DeadLetterReason.CONNECTION_ERROR: "the connection broke on every attempt",
    DeadLetterReason.BAD_RESPONSE: "every response body was not JSON, or lacked the answer",
}
