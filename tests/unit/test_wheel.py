"""The wheel is the product: it holds what runs in Airflow or in the pod (local mode's llama-server
included), and none of the developer tools of ``dev/`` (``llm_etl_dev``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hatchling.builders.wheel import WheelBuilder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The provider's wheel, built as ``uv build --wheel`` builds it (hatchling), as {path: content}."""
    folder = tmp_path_factory.mktemp("wheel")
    (built,) = WheelBuilder(str(REPO)).build(directory=str(folder), versions=["standard"])
    with zipfile.ZipFile(built) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_wheel_holds_local_mode_and_the_pod_programs(wheel):
    for module in ("backends/local.py", "backends/llama_server.py", "cli.py", "worker/cli.py"):
        assert f"llm_etl_provider/{module}" in wheel


def test_the_wheel_holds_no_developer_tool(wheel):
    assert [name for name in wheel if name.startswith(("llm_etl_provider/dev/", "llm_etl_dev/"))] == []
    assert "llm_etl_provider/dev.py" not in wheel


def test_nothing_in_the_wheel_imports_or_runs_the_developer_tools(wheel):
    # an import, an importlib call or a `python -m llm_etl_dev...` all spell the package's name (the metadata
    # may: the README, its long description, tells developers where the tools are)
    package = {name: content for name, content in wheel.items() if name.startswith("llm_etl_provider/")}
    assert "llm_etl_provider/backends/llama_server.py" in package
    assert [name for name, content in package.items() if b"llm_etl_dev" in content] == []


def test_the_wheel_neither_requires_nor_installs_the_developer_command(wheel):
    metadata = next(content for name, content in wheel.items() if name.endswith(".dist-info/METADATA"))
    requires = [line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist:")]
    assert requires
    assert [line for line in requires if "llm-etl-dev" in line] == []
    scripts = next(content for name, content in wheel.items() if name.endswith(".dist-info/entry_points.txt"))
    console = scripts.decode().split("[console_scripts]")[1].split("\n[")[0]
    assert sorted(line.split("=")[0].strip() for line in console.strip().splitlines()) == [
        "llm-etl",
        "llm-etl-worker",
    ]
