"""Errors of the in-pod worker, and the exit codes they map to.

Run-level errors stop the worker; each carries the process exit code the pod (and so Airflow) sees::

    WorkerError                      exit 1   unexpected failure of the run
     ├── ConfigurationError          exit 2   bad arguments, template, schema, checkpoint or unreadable input
     ├── ServerUnavailableError      exit 3   the LLM server never became ready, or went away mid-run
     └── DeadLetterThresholdError    exit 4   the run finished, but too many records went to the dead letters

Record-level errors never stop the run: the engine retries what is transient and sends the rest to the
dead-letter stream with a reason code::

    LLMCallError                              one call to the LLM server failed
     ├── TransientLLMError                    connect error, timeout, 5xx (503 queue full), unreadable body
     └── LLMRejectedError                     any other 4xx: the server will refuse this request every time

Messages name what was wrong and where (file, line, record id) and never include record content.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIGURATION = 2
EXIT_SERVER_UNAVAILABLE = 3
EXIT_DEAD_LETTER_THRESHOLD = 4
EXIT_STOPPED = 143  # 128 + SIGTERM, as a shell reports a process the signal ended


class WorkerError(Exception):
    """The run failed."""

    exit_code = EXIT_FAILURE


class ConfigurationError(WorkerError):
    """The arguments, the task definition, the checkpoint or the input as a whole are unusable."""

    exit_code = EXIT_CONFIGURATION


class ServerUnavailableError(WorkerError):
    """The LLM server did not become ready in time, or stopped answering during the run."""

    exit_code = EXIT_SERVER_UNAVAILABLE


class DeadLetterThresholdError(WorkerError):
    """More records went to the dead letters than the configured threshold allows."""

    exit_code = EXIT_DEAD_LETTER_THRESHOLD


class LLMCallError(Exception):
    """One call to the LLM server failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransientLLMError(LLMCallError):
    """The call may succeed if repeated: connect error, timeout, 5xx, or a cut or unreadable response."""


class LLMRejectedError(LLMCallError):
    """The server refused the request (a 4xx other than a transient one); repeating it will not help."""
