from __future__ import annotations

import logging

import pytest

from llm_etl_provider.backends.local import LocalBackend
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.staging.plan import WorkerMemory, lines_within, plan_key


def backend(tmp_path):
    return LocalBackend(
        str(tmp_path), dag_id="dag", scope="dag", run_id="r1", log=logging.getLogger("t"), plan="p1"
    )


def stage_then_fail(backend) -> tuple[bytes, bool]:
    """Open the plan, then fail as a shard that cannot be staged would; return the key and whether it was
    new."""
    opened = []

    def fail() -> None:
        with plan_key(backend) as key_and_fresh:
            opened.append(key_and_fresh)
            raise RuntimeError("a shard could not be staged")

    with pytest.raises(RuntimeError, match="a shard could not be staged"):
        fail()
    return opened[0]


def test_a_failure_after_making_the_plans_key_removes_the_plan(tmp_path):
    key, fresh = stage_then_fail(backend(tmp_path))
    assert fresh
    assert len(key) == 32
    assert not backend(tmp_path).plan_root.exists()


def test_a_failure_with_a_kept_key_keeps_the_plan(tmp_path):
    with plan_key(backend(tmp_path)) as (key, _):
        pass
    # another execution's shards may be working with the plan's key
    assert stage_then_fail(backend(tmp_path)) == (key, False)
    assert backend(tmp_path).key_file.is_file()


def test_lines_within_a_shard():
    lines = [2, 5, 5, 9, 14]
    assert lines[lines_within(lines, 1, 5)] == [2]
    assert lines[lines_within(lines, 5, 14)] == [5, 5, 9]
    assert lines[lines_within(lines, 14, None)] == [14]
    assert lines[lines_within(lines, 15, None)] == []


def test_a_shard_over_the_workers_memory_is_refused_naming_what_it_needs(monkeypatch):
    monkeypatch.setattr("llm_etl_provider.contract.layout.WORKER_BASE_MEMORY_BYTES", 1 << 20)
    monkeypatch.setattr("llm_etl_provider.contract.layout.WORKER_BYTES_PER_RECORD", 1 << 20)
    memory = WorkerMemory("32Mi", 32 << 20)
    memory.check(0, 31)
    with pytest.raises(
        StagingError, match=r"^shard 3 holds 32 records, .* about 33Mi .* worker_memory 32Mi: "
    ):
        memory.check(3, 32)
