"""A llama-server that outlives the command that started it (``local-server``), found again by its port."""

from __future__ import annotations

from pathlib import Path

from llm_etl_dev.processes import stop_process
from llm_etl_provider.backends.llama_server import READY_TIMEOUT_SECONDS, LlamaServer, cache_dir


def pid_file(port: int) -> Path:
    return cache_dir() / "run" / f"llama-server-{port}.pid"


def start_detached(
    port: int, parallel: int, threads: int | None, timeout: float = READY_TIMEOUT_SECONDS
) -> LlamaServer:
    """Start a server that outlives this process, wait until it is ready, and record its pid."""
    server = LlamaServer(port=port, parallel=parallel, threads=threads)
    server.start(detach=True)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    assert server.process is not None
    pid_file(server.port).write_text(str(server.process.pid))
    return server


def stop_detached(port: int) -> bool:
    """Stop a server started by :func:`start_detached`; return whether one was running."""
    path = pid_file(port)
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return False
    path.unlink()
    return stop_process(pid, 10.0)
