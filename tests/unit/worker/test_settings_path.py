"""One settings path: each flag of ``llm-etl-worker`` is declared once, in
:class:`~llm_etl_provider.contract.invocation.WorkerInvocation` (its type, default, range and help), and read
where it is used, in one module of the worker, straight from the invocation: the engine takes the invocation
itself, so no settings class repeats a default or a range and no mapping stands in between. A new flag
touches two files: its declaration and its use.

Reads are found by name: ``invocation.<flag>``, ``self.invocation.<flag>``, or the same through ``settings``
(what a settings object standing in between would be called).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections import defaultdict
from pathlib import Path

import pytest

import llm_etl_provider.worker as worker_package
from llm_etl_provider.contract.invocation import WorkerInvocation, default_of, parse_argv
from llm_etl_provider.worker.engine import Engine

WORKER = Path(worker_package.__file__).parent
DECLARED = {item.name for item in dataclasses.fields(WorkerInvocation)}
OWNERS = {"invocation", "settings"}


def flag_reads(source: str) -> set[str]:
    """The attributes the source reads of an invocation (or of a settings object)."""
    reads = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if name in OWNERS:
                reads.add(node.attr)
    return reads


def readers_of_each_flag(folder: Path = WORKER) -> dict[str, list[str]]:
    """Each declared flag and the worker's modules that read it."""
    readers = defaultdict(list)
    for path in sorted(folder.rglob("*.py")):
        for name in flag_reads(path.read_text()) & DECLARED:
            readers[name].append(path.name)
    return dict(readers)


def test_every_declared_flag_is_read_by_the_worker():
    assert sorted(DECLARED - set(readers_of_each_flag())) == []


def test_each_flag_is_read_in_one_module_of_the_worker():
    assert {name: modules for name, modules in readers_of_each_flag().items() if len(modules) > 1} == {}


def test_the_engine_reads_only_declared_flags_from_the_invocation_it_is_given():
    engine = (WORKER / "engine.py").read_text()
    read = flag_reads(engine) - {"invocation"}  # self.invocation itself
    assert read
    assert read <= DECLARED
    annotation = inspect.signature(Engine).parameters["invocation"].annotation
    assert annotation in (WorkerInvocation, "WorkerInvocation")


def test_the_engine_runs_on_the_declared_defaults():
    argv = ["--task", "sentiment", "--input", "in.jsonl", "--output", "o", "--llm-url", "u", "--model", "m"]
    invocation = parse_argv(argv)
    for name in flag_reads((WORKER / "engine.py").read_text()) & DECLARED:
        assert getattr(invocation, name) == default_of(name), name


EVERY_FLAG_READ = "".join(f"invocation.{name}\n" for name in sorted(DECLARED))


@pytest.mark.parametrize(
    ("modules", "unread", "read_twice"),
    [
        ({"cli.py": EVERY_FLAG_READ}, set(), {}),
        # a flag declared and never used
        ({"cli.py": EVERY_FLAG_READ.replace("invocation.summary\n", "")}, {"summary"}, {}),
        # a mapping in between: the CLI hands a flag to a settings object, which the engine reads
        (
            {
                "cli.py": EVERY_FLAG_READ,
                "engine.py": "def run(self):\n    return self.settings.checkpoint_every\n",
            },
            set(),
            {"checkpoint_every": ["cli.py", "engine.py"]},
        ),
    ],
)
def test_what_breaks_the_path_is_found(tmp_path, modules, unread, read_twice):
    for name, source in modules.items():
        (tmp_path / name).write_text(source)
    readers = readers_of_each_flag(tmp_path)
    assert DECLARED - set(readers) == unread
    assert {name: found for name, found in readers.items() if len(found) > 1} == read_twice
