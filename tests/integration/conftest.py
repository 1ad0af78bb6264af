"""Integration fixtures: one real llama-server with the bundled SmolLM2 model for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_etl_provider.backends.llama_server import LlamaServer

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"
BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    # One generation thread: on a shared 2-core machine two threads spin-wait against the test processes.
    with LlamaServer(parallel=4, threads=1, ctx_per_slot=1536) as server:
        yield server


def worker(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the ``llm-etl-worker`` console script."""
    return subprocess.run(
        [str(BIN / "llm-etl-worker"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
