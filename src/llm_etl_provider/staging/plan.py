"""What both transports share while they stage a plan: its key, each shard's descriptor (with the duplicate
lines within it), and the workers' memory limit that every shard is held to."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_etl_provider.contract import layout
from llm_etl_provider.contract.duplicates import encode_line_numbers
from llm_etl_provider.contract.reuse import encode_reused
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import StagingError

if TYPE_CHECKING:
    from llm_etl_provider.backends import RunBackend
    from llm_etl_provider.staging.cutting import ByteRange, Shard
    from llm_etl_provider.staging.reuse import ReusedResults


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


def shard_descriptor(
    unit: Shard | ByteRange,
    records: int,
    end: int | None,
    *,
    fmt: str,
    plan: str,
    malformed: dict[str, list[int]],
    duplicates: list[int],
    stage: Callable[[dict[str, bytes]], dict[str, Any]],
    reused: ReusedResults | None = None,
    **transported: Any,
) -> dict[str, Any]:
    """The descriptor of a shard that holds the input lines from its first up to ``end`` (the next shard's
    first; None: to the last), once ``stage`` staged it: ``stage`` is given the files its worker reads beside
    it, by name: the shard's lines whose id an earlier shard holds (its worker dead-letters them as
    duplicate_id), and the earlier results of its records (``reused``: an incremental run); it returns where
    it staged the shard. What the transport adds of its own (size, digest, URLs) comes as ``transported``."""
    repeated = duplicates[lines_within(duplicates, unit.first_line, end)]
    earlier = reused.between(unit.first_line, end) if reused is not None else []
    files = {}
    if repeated:
        files[layout.DUPLICATES_FILE_NAME] = encode_line_numbers(repeated)
    if earlier:
        files[layout.REUSED_FILE_NAME] = encode_reused(earlier)
    return ShardDescriptor(
        index=unit.index,
        records=records,
        line_offset=unit.line_offset,
        input_format=fmt,
        first_line=unit.first_line,
        malformed=malformed if unit.index == 0 else {},  # shard 0 reports the input's
        duplicates=len(repeated),
        reused=len(earlier),
        plan=plan,
        **transported,
        **stage(files),
    ).to_xcom()
