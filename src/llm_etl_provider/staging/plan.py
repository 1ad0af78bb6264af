"""What both transports share while they stage a plan: its key, the duplicate lines within a shard, and the
workers' memory limit that every shard is held to."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_etl_provider.contract import layout
from llm_etl_provider.exceptions import StagingError

if TYPE_CHECKING:
    from llm_etl_provider.backends import RunBackend


@contextlib.contextmanager
def plan_key(backend: RunBackend) -> Iterator[tuple[bytes, bool]]:
    """The plan's key (kept if staged before) while the plan is staged; a stage that fails after making
    it removes what it staged, so that no shard of patient data outlives a failed stage."""
    key, fresh = backend.open_plan()
    try:
        yield key, fresh
    except BaseException:
        if fresh:
            backend.remove_plan()
        raise


@dataclass(frozen=True)
class WorkerMemory:
    """The workers' memory limit, which every shard is checked against before anything is staged.

    :param setting: the limit as given (a Kubernetes quantity, ``1Gi``), for messages
    :param limit: the limit in bytes
    """

    setting: str
    limit: int

    def check(self, index: int, records: int) -> None:
        """Refuse a shard whose worker the memory ``limit`` (bytes) cannot hold (its id index grows with its
        records)."""
        needed = -(-layout.worker_memory_needed(records) // (1 << 20))  # MiB
        if needed << 20 > self.limit:
            raise StagingError(
                f"shard {index} holds {records} records, whose worker needs about {needed}Mi of memory, over "
                f"worker_memory {self.setting}: raise worker_memory, or use more pods"
            )


def lines_within(lines: list[int], first: int, end: int | None) -> slice:
    """The part of the sorted ``lines`` from ``first`` up to ``end`` (excluded; None: to the last)."""
    return slice(
        bisect.bisect_left(lines, first), len(lines) if end is None else bisect.bisect_left(lines, end)
    )
