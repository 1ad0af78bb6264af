"""Stopping what the developer tools and the tests start: pids, process groups, several at once, another
first signal."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from llm_etl_dev.processes import pid_alive, stop_process, stop_processes
from tests.unit.children import SLEEPER, STUBBORN


def test_a_child_alone_is_stopped_as_the_provider_stops_one(children):
    process = children.start(STUBBORN)
    assert stop_process(process, 0.3) is True
    assert process.returncode == -signal.SIGKILL
    assert stop_process(process, 0.3) is False


def test_the_first_signal_may_be_another(children):
    process = children.start(SLEEPER)
    stop_process(process, 10, first=signal.SIGINT)
    assert process.returncode == -signal.SIGINT  # Python ends on an unhandled KeyboardInterrupt so


def test_a_pid_is_stopped_and_watched_until_it_ends(children):
    process = children.start(STUBBORN)
    assert stop_process(process.pid, 0.3) is True
    assert not pid_alive(process.pid)  # reaped: a child that ended is no zombie left running
    assert stop_process(process.pid, 0.3) is False


def test_a_group_is_signalled_whole_and_several_processes_share_one_timeout(children):
    # each leads a session of its own, with a child that ignores SIGTERM as well
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        f"exec({STUBBORN!r})\n"
    )
    processes = [children.start(code, start_new_session=True) for _ in range(2)]
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
