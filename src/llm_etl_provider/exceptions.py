"""Errors raised on the Airflow side of llm-etl-provider.

The worker and the transport have trees of their own (``worker.exceptions``, ``transport.exceptions``)::

    AirflowException
     ├── LLMConnectionError          the LLM connection is missing a field or holds an unusable value
     ├── PodSpecError                the pod cannot be built from the given parameters
     │    └── WorkerImageUnsetError (+ AirflowFailException)   no worker image is given
     ├── StagingError                the input cannot be staged (unreadable, empty, not what it claims)
     │    └── StagingInputError       the input cannot be split into shards (the sharding's own refusals)
     ├── ExtractionError             a shard's results cannot be extracted; nothing was published for it
     │    └── FrameStreamRejectedError (+ AirflowFailException)   the frame stream failed verification
     ├── ShardFailedError (+ AirflowFailException)   a shard ended failed; its output is published as such
     ├── RunIncompleteError (+ AirflowFailException)  not every shard of a run succeeded
     ├── LocalRunError               a local step of a shard (model check, server start) failed
     └── WorkerExitError             the worker exited with an error code another try may not meet
          └── WorkerRefusedError (+ AirflowFailException)   a code a retry would meet again
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from llm_etl_provider.contract.codes import ExitCode


class LLMConnectionError(AirflowException):
    """The LLM connection is missing a field or holds an unusable value."""


class PodSpecError(AirflowException):
    """The pod cannot be built from the given parameters."""


class WorkerImageUnsetError(PodSpecError, AirflowFailException):
    """No worker image is given: none is published, so the deployment builds and pushes its own, and a retry
    would meet the same setting."""


class StagingError(AirflowException):
    """The input cannot be staged: unreadable, empty, or a record too large for a shard."""


class StagingInputError(StagingError):
    """The input cannot be split: unreadable, or a CSV header or line that a shard cannot keep."""


class ExtractionError(AirflowException):
    """A shard's results cannot be extracted; nothing was published for it."""


class FrameStreamRejectedError(ExtractionError, AirflowFailException):
    """The pod log's frame stream failed verification (cut, rotated, tampered, another run's): a retry would
    read the same log, so the task fails without one."""


class ShardFailedError(AirflowFailException):
    """A shard's worker went over its dead-letter threshold: its results and dead letters are published,
    without ``_SUCCESS``, its manifest saying it failed; a retry would meet the same records."""


class RunIncompleteError(AirflowFailException):
    """Not every shard of the run succeeded: the run's manifest says which, and the run gets no ``_SUCCESS``
    (and no Asset event)."""


class LocalRunError(AirflowException):
    """A local step of a shard failed (the model check, the LLM server's start)."""


class WorkerExitError(AirflowException):
    """The worker exited with an error code; another try may end otherwise."""


class WorkerRefusedError(WorkerExitError, AirflowFailException):
    """The worker exited with a code that another try would meet again (bad settings or input, too many dead
    letters): the task fails without a retry."""


def worker_exit_error(code: int, where: str) -> WorkerExitError:
    """The error for a worker (or model loader) that exited with ``code``: fail at once unless a retry may
    help."""
    message = f"{where} exited with code {code} ({ExitCode.describe(code)})"
    try:
        retryable = ExitCode(code).retryable
    except ValueError:
        retryable = True
    return WorkerExitError(message) if retryable else WorkerRefusedError(message)
