"""The part of Airflow's task context that the operators read, for tests that call ``execute`` directly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from airflow.sdk import Context


def task_context(run_id: str, try_number: int = 1) -> Context:
    """A run's context for a task's ``try_number``-th try (the enrichment seals its try into its stream)."""
    return cast("Context", {"run_id": run_id, "ti": SimpleNamespace(try_number=try_number)})
