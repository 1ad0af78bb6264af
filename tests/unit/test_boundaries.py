"""Who may import whom: the worker's image holds no Airflow, and each side reaches the other only through the
modules neither owns (``contract/``, ``formats/``, ``transport/``).

Every import is counted, those inside functions and under ``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import ast
from collections.abc import Set
from pathlib import Path

import pytest

import llm_etl_provider

PACKAGE = Path(llm_etl_provider.__file__).parent
# the Airflow side: what runs in Airflow's workers and triggerer
AIRFLOW_SIDE = (
    "operators", "backends", "hooks", "triggers", "pod", "staging", "task_group", "params", "exceptions",
    "config",
)  # fmt: skip
# what the worker's image runs: no Airflow there
IN_THE_WORKER_IMAGE = ("worker", "contract", "formats", "transport")


def part(module: str) -> str:
    """The package's top-level module or package that ``module`` names (``worker`` for ``...worker.cli``)."""
    return module.split(".")[1] if module.startswith("llm_etl_provider.") else module.split(".")[0]


def imports(path: Path) -> set[str]:
    """The modules ``path`` imports, as absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            assert node.module is not None
            names.add(node.module)
            if node.module == "llm_etl_provider":  # from llm_etl_provider import worker
                names.update(f"llm_etl_provider.{alias.name}" for alias in node.names)
    return names


def modules_of(top: str) -> list[Path]:
    folder = PACKAGE / top
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{top}.py"]


def offenders(tops: tuple[str, ...], allowed: set[str] | None = None, forbidden: Set[str] = frozenset()):
    """``module: import`` for each import of ``tops``' modules outside ``allowed`` (this package's parts, and
    any third-party name when None is given) or inside ``forbidden``."""
    found = []
    for top in tops:
        for path in modules_of(top):
            for name in sorted(imports(path)):
                ours = name.startswith("llm_etl_provider.")
                if part(name) in forbidden or (ours and allowed is not None and part(name) not in allowed):
                    found.append(f"{path.relative_to(PACKAGE)}: {name}")
    return found


def test_the_parts_named_here_exist():
    for top in AIRFLOW_SIDE + IN_THE_WORKER_IMAGE:
        assert modules_of(top), top
        assert all(path.exists() for path in modules_of(top)), top


def test_nothing_in_the_worker_image_imports_airflow():
    assert offenders(IN_THE_WORKER_IMAGE, forbidden={"airflow"}) == []


def test_the_contract_imports_nothing_of_either_side():
    assert offenders(("contract",), allowed={"contract"}) == []


def test_the_formats_import_only_the_contract():
    assert offenders(("formats",), allowed={"contract", "formats"}) == []


def test_the_airflow_side_imports_nothing_of_the_worker():
    assert offenders(AIRFLOW_SIDE, forbidden={"worker"}) == []


def test_the_worker_imports_nothing_of_the_airflow_side():
    assert offenders(("worker",), forbidden=set(AIRFLOW_SIDE)) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        (
            "from llm_etl_provider.worker.records import RecordReader",
            ["operators/x.py: llm_etl_provider.worker.records"],
        ),
        ("from llm_etl_provider import worker", ["operators/x.py: llm_etl_provider.worker"]),
        (
            "def f():\n    import llm_etl_provider.worker.tokenizer",
            ["operators/x.py: llm_etl_provider.worker.tokenizer"],
        ),
        ("from llm_etl_provider.formats.records import RecordReader", []),
    ],
)
def test_an_import_of_the_worker_is_found_wherever_it_is(tmp_path, monkeypatch, source, found):
    (tmp_path / "operators").mkdir()
    (tmp_path / "operators" / "x.py").write_text(source + "\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    assert offenders(("operators",), forbidden={"worker"}) == found
