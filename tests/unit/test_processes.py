"""One way to stop a process: a signal to end, a wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_etl_provider.processes import pid_alive, stop_process, stop_processes

# prints "ready" once its SIGTERM (and SIGINT) handling is set; ignoring them, it waits for SIGKILL
_STUBBORN = (
    "import signal, sys, time\n"
    "for s in (signal.SIGTERM, signal.SIGINT):\n"
    "    signal.signal(s, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


_STARTED: list[subprocess.Popen[str]] = []


def _started(code: str, **options: object) -> subprocess.Popen[str]:
    process: subprocess.Popen[str] = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **options
    )  # type: ignore[call-overload]
    _STARTED.append(process)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.fixture(autouse=True)
def _closed() -> Iterator[None]:
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_a_process_that_ends_on_sigterm_is_not_killed():
    process = _started("import time; print('ready', flush=True); time.sleep(60)")
    assert stop_process(process, 10) is True
    assert process.returncode == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout():
    process = _started(_STUBBORN)
    started = time.monotonic()
    assert stop_process(process, 0.3) is True
    assert process.returncode == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < 5


def test_the_first_signal_may_be_another():
    process = _started("import time; print('ready', flush=True); time.sleep(60)")
    stop_process(process, 10, first=signal.SIGINT)
    assert process.returncode == -signal.SIGINT  # Python ends on an unhandled KeyboardInterrupt so


def test_an_ended_process_is_reported_as_not_running():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert stop_process(process, 1) is False


def test_a_pid_is_stopped_and_watched_until_it_ends():
    process = _started(_STUBBORN)
    assert stop_process(process.pid, 0.3) is True
    assert not pid_alive(process.pid)  # reaped: a child that ended is no zombie left running
    assert stop_process(process.pid, 0.3) is False


def test_a_group_is_signalled_whole_and_several_processes_share_one_timeout():
    # each leads a session of its own, with a child that ignores SIGTERM as well
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {_STUBBORN!r}], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        f"exec({_STUBBORN!r})\n"
    )
    processes = [_started(code, start_new_session=True) for _ in range(2)]
    started = time.monotonic()
    assert stop_processes(processes, 0.5, group=True) == [True, True]
    assert time.monotonic() - started < 5  # not 0.5 s for each in turn plus the kills
    assert [p.returncode for p in processes] == [-signal.SIGKILL, -signal.SIGKILL]
    for process in processes:  # the children went with their group
        deadline = time.monotonic() + 5
        while _group_members(process.pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _group_members(group: int) -> list[int]:
    """The processes of process group ``group`` that still run (zombies, ended, do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(") ", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(pgrp) == group and state != "Z":
            members.append(int(stat.parent.name))
    return members
