"""A file the worker touches while its event loop runs; the pod's readiness and liveness probes read its age.

A worker whose loop stalls (a hang, a deadlock) stops touching it, and the kubelet's liveness probe ends the
container long before the pod's deadline would.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


async def beat(path: Path, interval: float = 10.0) -> None:
    """Touch ``path`` every ``interval`` seconds until cancelled."""
    while True:
        _touch(path)
        await asyncio.sleep(interval)


def _touch(path: Path) -> None:
    # A local file's metadata update: microseconds, not worth a thread hop every 10 s.
    with open(path, "ab"):
        os.utime(path)


def heartbeat_age(path: Path) -> float | None:
    """Seconds since ``path`` was last touched; None when it does not exist."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None
