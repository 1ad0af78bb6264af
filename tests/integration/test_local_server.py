"""``llm-etl-dev local-server``: starts llama-server with the bundled model and returns once it is ready."""

from __future__ import annotations

import subprocess

import httpx

from llm_etl_provider.backends.llama_server import MODEL_NAME, free_port
from tests.integration.conftest import BIN


def test_local_server_starts_detached_answers_and_stops():
    port = free_port()
    started = subprocess.run(
        [str(BIN / "llm-etl-dev"), "local-server", "--port", str(port), "--parallel", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        assert f"ready at http://127.0.0.1:{port}" in started.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        props = httpx.get(f"http://127.0.0.1:{port}/props").json()
        assert props["total_slots"] == 2
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["id"] == MODEL_NAME
    finally:
        stopped = subprocess.run(
            [str(BIN / "llm-etl-dev"), "local-server", "--port", str(port), "--stop"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert "stopped" in stopped.stdout
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        raise AssertionError("the server still answers after --stop")
    except httpx.TransportError:
        pass
