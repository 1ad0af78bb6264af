"""Errors of the in-pod worker and its model loader, and the exit codes they map to.

Run-level errors stop the process; each carries the :class:`~llm_etl_provider.contract.codes.ExitCode` the pod
(and so Airflow) sees::

    WorkerError                      exit 1   unexpected failure of the run
     ├── ConfigurationError          exit 2   bad arguments, template, schema, checkpoint or input file
     ├── ServerUnavailableError      exit 3   the LLM server never became ready, or went away mid-run
     ├── DeadLetterThresholdError    exit 4   the run finished, but too many records went to the dead letters
     ├── ModelLoadError              exit 5   the model loader cannot fetch the model, or its sha256 differs
     └── HeartbeatError              exit 6   the heartbeat file (the liveness probe's) cannot be touched

An input that cannot be read as a whole raises the reader's
:class:`~llm_etl_provider.formats.exceptions.InputError` (its format, its CSV header, a cut gzip): exit 2 too.

Record-level errors never stop the run: the engine retries what is transient and sends the rest to the
dead-letter stream with a :class:`~llm_etl_provider.contract.codes.DeadLetterReason`::

    RecordError                               one record cannot be enriched (yet)
     ├── LLMCallError                         one call to the LLM server failed
     │    ├── TransientLLMError               connect error, timeout, 5xx (503 queue full), unreadable body
     │    └── LLMRejectedError                any other 4xx: the server will refuse this request every time
     ├── InvalidOutputError                   the answer is not JSON or does not match the task's schema
     └── MissingFieldError                    a field the prompt template needs is missing or empty

Messages name what was wrong and where (file, line, record id) and never include record content.
"""

from __future__ import annotations

from llm_etl_provider.contract.codes import DeadLetterReason, ExitCode


class WorkerError(Exception):
    """The run failed."""

    exit_code = ExitCode.FAILURE


class ConfigurationError(WorkerError):
    """The arguments, the task definition, the checkpoint or the input as a whole are unusable."""

    exit_code = ExitCode.CONFIGURATION


class ServerUnavailableError(WorkerError):
    """The LLM server did not become ready in time, or stopped answering during the run."""

    exit_code = ExitCode.SERVER_UNAVAILABLE


class DeadLetterThresholdError(WorkerError):
    """More records went to the dead letters than the configured threshold allows."""

    exit_code = ExitCode.DEAD_LETTER_THRESHOLD


class ModelLoadError(WorkerError):
    """The model could not be fetched, or its checksum does not match."""

    exit_code = ExitCode.MODEL_LOAD


class RecordError(Exception):
    """One record cannot be enriched; ``reason`` is its dead letter's reason."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LLMCallError(RecordError):
    """One call to the LLM server failed; ``status`` is the HTTP status where the server answered."""

    def __init__(self, reason: DeadLetterReason, detail: str, status: int | None = None) -> None:
        super().__init__(reason, detail)
        self.status = status


class TransientLLMError(LLMCallError):
    """The call may succeed if repeated: connect error, timeout, 5xx, or a cut or unreadable response."""


class LLMRejectedError(LLMCallError):
    """The server refused the request (a 4xx other than a transient one); repeating it will not help."""


class InvalidOutputError(RecordError):
    """The model's answer is not JSON, or does not match the task's schema."""

    def __init__(self, detail: str) -> None:
        super().__init__(DeadLetterReason.INVALID_OUTPUT, detail)


class MissingFieldError(RecordError):
    """A field the template needs is missing or empty in the record (or, for a prompt of the whole record,
    the record has no field to show)."""

    def __init__(self, field_name: str | None, detail: str | None = None) -> None:
        super().__init__(
            DeadLetterReason.MISSING_FIELD, detail or f"field {field_name!r} is missing or empty"
        )
        self.field_name = field_name


class HeartbeatError(WorkerError):
    """The worker cannot touch its heartbeat file: the liveness probe would end it as hung."""

    exit_code = ExitCode.HEARTBEAT
