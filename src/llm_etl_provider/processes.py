"""Stop a child process: SIGTERM, a wait, then SIGKILL. Local mode stops its llama-server so."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], timeout: float) -> bool:
    """Stop the child ``process``: send it SIGTERM, give it ``timeout`` seconds to end, then SIGKILL it, and
    reap it. Return whether it was running."""
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return True
