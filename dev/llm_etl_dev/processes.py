"""Stop what the developer tools and the tests start beyond a plain child: processes known by pid only (one
an earlier command started), process groups (a process in a session of its own, with what it started),
several at once, or with another first signal. A plain child is the provider's
:func:`llm_etl_provider.processes.stop_process`; the sequence is the same: a signal to end, a wait, then
SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_etl_provider.processes import stop_process as stop_child

Process = subprocess.Popen[Any] | int  # a child, or the pid of any process (one an earlier command started)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a child of this process that ended is reaped; a zombie counts as
    ended."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited:
            return False
    except ChildProcessError:
        pass  # not a child of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie still answers kill(0)
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _running(process: Process) -> bool:
    if isinstance(process, int):
        return pid_alive(process)
    return process.poll() is None


def _signal(process: Process, signum: int, group: bool) -> None:
    pid = process if isinstance(process, int) else process.pid
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def stop_processes(
    processes: Sequence[Process], timeout: float, *, group: bool = False, first: int = signal.SIGTERM
) -> list[bool]:
    """Stop ``processes`` together: send each ``first`` (SIGTERM), give them ``timeout`` seconds in all to
    end, then SIGKILL those that have not and wait for them. With ``group``, signal the process group each
    leads (a process started in a session of its own, with what it started). Return, for each, whether it
    was running.

    :param processes: children (``subprocess.Popen``), reaped here, or pids of any processes
    """
    running = [_running(process) for process in processes]
    for process, alive in zip(processes, running, strict=True):
        if alive or group:  # a group may outlive its leader
            _signal(process, first, group)
    deadline = time.monotonic() + timeout
    for process, alive in zip(processes, running, strict=True):
        if not alive:
            continue
        if isinstance(process, subprocess.Popen):
            try:
                process.wait(max(deadline - time.monotonic(), 0))
                continue
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL, group)
                process.wait()
                continue
        while pid_alive(process) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(process):
            _signal(process, signal.SIGKILL, group)
            killed_by = time.monotonic() + 5  # not a child: it cannot be waited for, only watched
            while pid_alive(process) and time.monotonic() < killed_by:
                time.sleep(0.05)
    return running


def stop_process(
    process: Process, timeout: float, *, group: bool = False, first: int = signal.SIGTERM
) -> bool:
    """Stop one process as :func:`stop_processes` does; return whether it was running. A child, alone and
    sent SIGTERM, is the provider's :func:`~llm_etl_provider.processes.stop_process`."""
    if isinstance(process, subprocess.Popen) and not group and first == signal.SIGTERM:
        return stop_child(process, timeout)
    return stop_processes([process], timeout, group=group, first=first)[0]
