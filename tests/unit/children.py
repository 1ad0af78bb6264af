"""Child Python processes for the tests of stopping processes (``tests/unit/test_processes.py``,
``tests/unit/dev/test_processes.py``); the ``children`` fixture (``tests/unit/conftest.py``) ends what they
leave."""

from __future__ import annotations

import subprocess
import sys

# prints "ready", then sleeps until a signal ends it
SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
# prints "ready" once its SIGTERM (and SIGINT) handling is set; ignoring them, it waits for SIGKILL
STUBBORN = (
    "import signal, sys, time\n"
    "for s in (signal.SIGTERM, signal.SIGINT):\n"
    "    signal.signal(s, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


class Children:
    """Python children started by a test, each past its ``ready`` line; :meth:`close` kills what is left."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, code: str, **options: object) -> subprocess.Popen[str]:
        process: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **options
        )  # type: ignore[call-overload]
        self.started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        return process

    def close(self) -> None:
        while self.started:
            process = self.started.pop()
            if process.poll() is None:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()
