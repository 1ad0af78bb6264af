"""The log transport's staging: each shard of the input
(:func:`~llm_etl_provider.staging.cutting.plan_shards`) staged whole, in a Secret or a local file, with the
plan's key; the pods' frames come back in their logs."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.staging.plan import WorkerMemory, plan_key, shard_descriptor

if TYPE_CHECKING:
    from llm_etl_provider.backends import RunBackend
    from llm_etl_provider.staging.cutting import Shard
    from llm_etl_provider.staging.reuse import ReusedResults


def check_run_size(
    shards: Iterable[Shard],
    *,
    max_shards: int,
    max_staged_bytes: int,
    memory: WorkerMemory,
    name: str,
) -> None:
    """Count what the run would stage, before anything is: etcd holds every shard's Secret, and Airflow
    maps a task per shard. ``name`` is how messages name the input."""
    staged = 0
    for count, shard in enumerate(shards, 1):
        memory.check(shard.index, shard.records)
        staged += len(shard.data)
        if count > max_shards or staged > max_staged_bytes:
            raise StagingError(
                f"{name} would stage more than {max_shards} shards or "
                f"{max_staged_bytes} bytes (max_shards, max_staged_bytes): split the input into "
                "several runs, or raise the caps if the cluster's etcd can hold it"
            )


def stage_shards(
    backend: RunBackend,
    shards: Iterable[Shard],
    malformed: dict[str, list[int]],
    duplicates: list[int],
    plan: str,
    reused: ReusedResults | None = None,
    *,
    golden: bool = False,
) -> list[dict[str, Any]]:
    """Stage the plan's key (or keep it), then each shard as it is cut, with the earlier results of its
    records (``reused``: an incremental run): the stage holds two shards, not the whole input. Return the
    shards' descriptors, as dicts.

    The first pass (:func:`check_run_size`) has cut every shard already, so an input the sharding
    refuses (a CSV header it cannot repeat, a CSV line it would have to cut) fails before anything is
    staged.
    """
    with plan_key(backend):
        return [
            _stage_one(backend, shard, next_shard, malformed, duplicates, plan, reused, golden)
            for shard, next_shard in _with_next(shards)
        ]


def _stage_one(
    backend: RunBackend,
    shard: Shard,
    next_shard: Shard | None,
    malformed: dict[str, list[int]],
    duplicates: list[int],
    plan: str,
    reused: ReusedResults | None,
    golden: bool,
) -> dict[str, Any]:
    """One shard's descriptor, once it is staged."""
    return shard_descriptor(
        shard, shard.records, next_shard.first_line if next_shard else None,
        fmt=shard.input_format, plan=plan, malformed=malformed, duplicates=duplicates, reused=reused,
        stage=functools.partial(backend.stage_shard, shard),
        bytes=len(shard.data),
        input_sha256=hashlib.sha256(shard.data).hexdigest(),
        golden=golden,
    )  # fmt: skip


def _with_next(shards: Iterable[Shard]) -> Iterator[tuple[Shard, Shard | None]]:
    """Pair each shard with the one after it (None for the last), cutting one shard ahead."""
    iterator = iter(shards)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following
        current = following
