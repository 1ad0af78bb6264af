"""Stopping a child: SIGTERM, a wait, then SIGKILL (local mode's llama-server)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from llm_etl_provider.processes import stop_process
from tests.unit.children import SLEEPER, STUBBORN


def test_a_process_that_ends_on_sigterm_is_not_killed(children):
    process = children.start(SLEEPER)
    assert stop_process(process, 10) is True
    assert process.returncode == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(children):
    process = children.start(STUBBORN)
    started = time.monotonic()
    assert stop_process(process, 0.3) is True
    assert process.returncode == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < 5


def test_an_ended_process_is_reported_as_not_running():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert stop_process(process, 1) is False
