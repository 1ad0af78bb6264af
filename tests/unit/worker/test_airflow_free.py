"""The in-pod worker must not import Airflow: it runs in a small image without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import llm_etl_provider.worker as worker_package

WORKER_DIR = Path(worker_package.__file__).parent


def test_no_worker_module_imports_airflow():
    offenders = []
    for path in sorted(WORKER_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "airflow"]
    assert offenders == []


def test_importing_the_worker_loads_no_airflow_module():
    code = (
        "import sys, pkgutil, importlib, llm_etl_provider.worker as w\n"
        "for m in pkgutil.walk_packages(w.__path__, w.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'airflow'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
