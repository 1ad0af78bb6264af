"""The part of Airflow's task context that the operators read, for tests that call ``execute`` directly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def task_context(run_id: str, try_number: int = 1) -> dict[str, Any]:
    """A run's context for a task's ``try_number``-th try (the enrichment seals its try into its stream)."""
    return {"run_id": run_id, "ti": SimpleNamespace(try_number=try_number)}
