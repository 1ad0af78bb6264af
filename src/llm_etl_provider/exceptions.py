"""Errors raised on the Airflow side of llm-etl-provider (the worker has its own, in ``worker.errors``)."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class LLMConnectionError(AirflowException):
    """The LLM connection is missing a field or holds an unusable value."""


class PodSpecError(AirflowException):
    """The pod cannot be built from the given parameters."""


class StagingError(AirflowException):
    """The input cannot be staged: unreadable, empty, or a record too large for a shard."""


class ExtractionError(AirflowException):
    """A shard's results cannot be extracted; nothing was published for it."""


class FrameStreamRejectedError(ExtractionError, AirflowFailException):
    """The pod log's frame stream failed verification (cut, rotated, tampered, another run's): a retry would
    read the same log, so the task fails without one."""
