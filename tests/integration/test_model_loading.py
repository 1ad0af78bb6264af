"""``llm-etl load-model``, the pod's init container, against a real HTTP server."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.conftest import BIN


class _Trickle(BaseHTTPRequestHandler):
    """A large model served slowly: a download that is still running when the pod is deleted."""

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 4096)
                time.sleep(0.05)
        except OSError:
            pass  # the loader went away


@pytest.fixture
def slow_model_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.gguf"
    server.shutdown()
    server.server_close()


def test_sigterm_stops_a_download_at_once(tmp_path, slow_model_url):
    dest = tmp_path / "models" / "model.gguf"
    command = ["load-model", "--dest", str(dest), "--url", slow_model_url, "--sha256", "0" * 64]
    process = subprocess.Popen([str(BIN / "llm-etl"), *command], stderr=subprocess.PIPE, text=True)
    partial = dest.with_name("model.gguf.part")
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    # handled: without a handler the signal kills it (-15), or, as PID 1 in a container, is ignored
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - stopped_at < 5
    assert "stopped by SIGTERM" in stderr
    assert not dest.exists()  # nothing unverified is ever put in place
