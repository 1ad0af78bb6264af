"""LocalBackend: a run's plan, key and shards as owner-only files under ``local_dir``, each try's worker log
beside them; and the sweeper's rule for local run folders."""

from __future__ import annotations

import gzip
import json
import logging
import os
import time

import pytest

from llm_etl_provider.backends.local import LocalBackend, sweep_local
from llm_etl_provider.contract.layout import (
    DUPLICATES_FILE_NAME,
    KEY_FILE_NAME,
    run_prefix,
    shard_folder,
)
from llm_etl_provider.exceptions import ExtractionError
from llm_etl_provider.staging.cutting import Shard
from llm_etl_provider.transport.keys import load_key

LOG = logging.getLogger(__name__)
RUN = "manual__2026-11-24T02:00:00+00:00"


def backend(tmp_path, run_id=RUN, plan="p1", **kwargs):
    return LocalBackend(
        str(tmp_path / "s"), dag_id="dag", scope="dag", run_id=run_id, log=LOG, plan=plan, **kwargs
    )


def shard(index=0):
    data = gzip.compress(b'{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n')
    return Shard(index=index, data=data, records=2, first_line=1, line_offset=0, input_format="jsonl")


def mode(path):
    return path.stat().st_mode & 0o777


def test_open_plan_makes_the_plans_key_once_and_keeps_it(tmp_path):
    first = backend(tmp_path)
    key, new = first.open_plan()
    assert (len(key), new) == (32, True)
    assert first.key_file == tmp_path / "s" / run_prefix("dag", RUN) / "p1" / KEY_FILE_NAME
    assert (mode(first.key_file), mode(first.plan_root)) == (0o600, 0o700)
    run = json.loads((first.root / "run.json").read_text())  # for the sweeper
    assert (run["dag_id"], run["run_id"]) == ("dag", RUN)
    assert backend(tmp_path).open_plan() == (key, False)  # a stage run again keeps the plan's key


def test_open_plan_renews_an_unreadable_key_and_the_plan_with_it(tmp_path, caplog):
    staged = backend(tmp_path)
    key, _ = staged.open_plan()
    staged.stage_shard(shard())
    staged.key_file.write_bytes(b"not a key")
    with caplog.at_level(logging.WARNING):
        renewed, new = backend(tmp_path).open_plan()
    assert new is True
    assert renewed != key
    assert "unreadable: staging the plan again" in caplog.text
    assert not staged.shard_dir(0).exists()  # what the lost key sealed is gone with it


def test_stage_shard_writes_owner_only_files_once(tmp_path):
    staged = backend(tmp_path)
    staged.open_plan()
    where = staged.stage_shard(shard(), files={DUPLICATES_FILE_NAME: b"repeated lines"})
    path = staged.shard_input(0, "jsonl")
    assert where == {"path": str(path)}
    assert path.parent == staged.plan_root / shard_folder(0)
    assert (mode(path.parent), mode(path), mode(path.parent / DUPLICATES_FILE_NAME)) == (0o700, 0o600, 0o600)
    assert path.read_bytes() == shard().data
    assert (path.parent / DUPLICATES_FILE_NAME).read_bytes() == b"repeated lines"
    written = path.stat().st_ino
    staged.stage_shard(shard())  # the same shard again (a stage run again): the file is kept as it is
    assert path.stat().st_ino == written


def test_frame_source_reads_the_latest_try_s_worker_log(tmp_path):
    staged = backend(tmp_path)
    key, _ = staged.open_plan()
    staged.stage_shard(shard())
    folder = staged.shard_dir(0)
    for name, text in [
        ("container-try-2.log", b"try 2\n"),
        ("container-try-10.log", b"try 10\nlast\n"),  # by number, not by name: 10 after 2
        ("container-try-0.log", b"no try 0\n"),
        ("llm-server.log", b"the server's\n"),
    ]:
        (folder / name).write_bytes(text)
    source = staged.frame_source(0)
    assert (source.key, source.attempt) == (key, 10)
    assert source.description == f"file {folder / 'container-try-10.log'}"
    assert list(source.lines) == [b"try 10\n", b"last\n"]


def test_frame_source_refuses_a_shard_without_a_worker_log(tmp_path):
    staged = backend(tmp_path)
    staged.open_plan()
    staged.stage_shard(shard())
    with pytest.raises(ExtractionError, match=r"shard 0: no worker log in .*: did the enrichment run\?"):
        staged.frame_source(0)
    with pytest.raises(ExtractionError, match="shard 1: no worker log"):
        staged.frame_source(1)  # never staged


def test_cleanup_removes_the_run_folder_with_every_plan(tmp_path):
    for plan in ("p1", "p2"):
        staged = backend(tmp_path, plan=plan)
        staged.open_plan()
        staged.stage_shard(shard())
    other = backend(tmp_path, run_id="another-run")
    other.open_plan()
    cleanup = backend(tmp_path, plan=None)
    assert cleanup.cleanup() == {"local_dirs": 1}
    assert not cleanup.root.exists()
    assert load_key(other.key_file)  # another run's is not touched
    assert cleanup.cleanup() == {"local_dirs": 0}  # idempotent


def test_sweep_local_removes_run_folders_of_ended_runs_only(tmp_path):
    """Local execution's plaintext shards and keys stayed in ``local_dir`` for ever when a run missed its
    cleanup (a stage that failed, a killed worker)."""
    for run_id, deadline in {"ended": 3600, "running": -60, "lost": -60, "unknown": 3600}.items():
        backend(tmp_path, run_id=run_id, run_deadline_seconds=deadline).open_plan()
    local = tmp_path / "s"
    (local / "llm-etl-unrecorded").mkdir()  # no run.json, and new: left until the TTL
    old = local / "llm-etl-unrecorded-old"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    states = {"dag/ended": "success", "dag/running": "running"}

    removed = sweep_local(
        local,
        lambda dag_id, run_id: states.get(f"{dag_id}/{run_id}"),
        now=time.time(),
        unrecorded_older_than=time.time() - 3600,
        log=LOG,
    )

    assert removed == 3  # ended, lost (unknown to Airflow, past its deadline) and the old unrecorded one
    left = {folder.name for folder in local.iterdir()}
    # a running run past its deadline is kept; an unknown one within its deadline too
    assert left == {run_prefix("dag", "running"), run_prefix("dag", "unknown"), "llm-etl-unrecorded"}
