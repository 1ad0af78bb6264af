from __future__ import annotations

import asyncio
import os
import time

from llm_etl_provider.cli import main
from llm_etl_provider.worker.heartbeat import beat, heartbeat_age


def test_the_heartbeat_is_touched_while_the_loop_runs(tmp_path):
    path = tmp_path / "heartbeat"

    async def run_for(seconds: float) -> None:
        task = asyncio.create_task(beat(path, interval=0.05))
        await asyncio.sleep(seconds)
        task.cancel()

    assert heartbeat_age(path) is None
    asyncio.run(run_for(0.01))
    first = path.stat().st_mtime_ns
    os.utime(path, (time.time() - 100, time.time() - 100))
    asyncio.run(run_for(0.2))
    assert path.stat().st_mtime_ns >= first
    age = heartbeat_age(path)
    assert age is not None
    assert age < 5


def test_the_probe_command_fails_on_a_missing_or_stale_heartbeat(tmp_path, capsys):
    path = tmp_path / "heartbeat"
    assert main(["check-heartbeat", str(path)]) == 1
    path.touch()
    assert main(["check-heartbeat", str(path), "--max-age", "60"]) == 0
    os.utime(path, (time.time() - 400, time.time() - 400))
    assert main(["check-heartbeat", str(path), "--max-age", "300"]) == 1
    assert "s old (limit 300 s)" in capsys.readouterr().err


def test_a_heartbeat_that_cannot_be_touched_ends_the_worker_with_its_own_code(tmp_path, capsys):
    """The heartbeat task died silently on an OSError, after which the probes killed the worker as hung."""
    from llm_etl_provider.contract.codes import ExitCode
    from llm_etl_provider.worker.cli import main as worker

    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "r1", "text": "fine"}\n')
    code = worker(
        [
            "--task", "sentiment", "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
            "--dead-letter", str(tmp_path / "dead.jsonl"), "--model", "m",
            "--llm-url", "http://127.0.0.1:9",  # never ready: the worker waits while the heartbeat fails
            "--ready-timeout", "60", "--heartbeat", str(tmp_path / "gone" / "heartbeat"),
        ]
    )  # fmt: skip
    assert code == ExitCode.HEARTBEAT
    assert "cannot touch the heartbeat file" in capsys.readouterr().err
