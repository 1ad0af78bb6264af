"""One settings path: each flag of ``llm-etl-worker`` is declared once, in
:class:`~llm_etl_provider.contract.invocation.WorkerInvocation` (its type, default, range and help), and read
where it is used, in one module of the worker, straight from the invocation: the engine takes the invocation
itself, so no settings class repeats a default or a range and no mapping stands in between. A new flag
touches two files: its declaration and its use.

Reads are found by name: ``invocation.<flag>``, ``self.invocation.<flag>``, or the same through ``settings``
(what a settings object standing in between would be called). A mapping is found by its shape: a module that
hands flags, each to a parameter of its own name, to a callable of another of the worker's modules
(``build_task(invocation.task, template=invocation.template, ...)``), several at once or to a parameter that
declares the flag's default again: each new flag would have to extend the callable's parameters and the call,
a third file. One value handed to a general helper (``RetryPolicy(max_attempts=...)``) is the flag's use. The
formats that the stage shares with the worker (``RecordReader``) take values, not the invocation: the stage
has none.

One function reads flags for another module's use: :func:`~llm_etl_provider.worker.tasks.unprompted_fields`,
the fields a prompt of the whole record leaves out (the id, which the reader reads for its own use); its reads
are not counted.
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


def is_flag_read(node: ast.AST) -> bool:
    """Whether ``node`` reads an attribute of an invocation (or of a settings object)."""
    if not isinstance(node, ast.Attribute):
        return False
    owner = node.value
    return (owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)) in OWNERS


# reads of flags that other modules use, for the prompt to leave their fields out
LEFT_OUT_OF_THE_PROMPT = "unprompted_fields"


def flag_reads(source: str) -> set[str]:
    """The attributes the source reads of an invocation (or of a settings object), but in
    :data:`LEFT_OUT_OF_THE_PROMPT`."""
    tree = ast.parse(source)
    skipped = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef) and function.name == LEFT_OUT_OF_THE_PROMPT
        for node in ast.walk(function)
    }
    return {node.attr for node in ast.walk(tree) if is_flag_read(node) and id(node) not in skipped}  # type: ignore[attr-defined]


def readers_of_each_flag(folder: Path = WORKER) -> dict[str, list[str]]:
    """Each declared flag and the worker's modules that read it."""
    readers = defaultdict(list)
    for path in sorted(folder.rglob("*.py")):
        for name in flag_reads(path.read_text()) & DECLARED:
            readers[name].append(path.name)
    return dict(readers)


def defaulted(definition: ast.FunctionDef | ast.ClassDef) -> set[str]:
    """The parameters of a function, or of a class (its ``__init__``, else its dataclass fields), that have
    a default."""
    if isinstance(definition, ast.ClassDef):
        init = [
            node for node in definition.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"
        ]
        if not init:
            return {
                node.target.id
                for node in definition.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value
            }
        definition = init[0]
    args = definition.args
    positional = args.posonlyargs + args.args
    with_defaults = positional[len(positional) - len(args.defaults) :]
    return {a.arg for a in with_defaults} | {
        a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is not None
    }


def hand_mappings(folder: Path = WORKER) -> list[str]:
    """``module: callee(flag=...)`` for each flag that a worker module hands, by its name, to a callable of
    another of the worker's modules, where the callable declares the flag again (a parameter of that name
    with a default of its own) or the call hands over several flags (a settings object by another name)."""
    trees = {path.name: ast.parse(path.read_text()) for path in sorted(folder.rglob("*.py"))}
    callables = {
        node.name: (module, defaulted(node))
        for module, tree in trees.items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }
    found = []
    for module, tree in trees.items():
        for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            callee = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
            if callee not in callables or callables[callee][0] == module:
                continue  # not the worker's, or the flag's use in the module that reads it
            handed = [
                keyword.arg
                for keyword in call.keywords
                if keyword.arg in DECLARED
                and is_flag_read(keyword.value)
                and keyword.value.attr == keyword.arg  # type: ignore[attr-defined]
            ]
            redeclared = callables[callee][1]
            found += [
                f"{module}: {callee}({name}=...)" for name in handed if len(handed) > 1 or name in redeclared
            ]
    return found


def test_every_declared_flag_is_read_by_the_worker():
    assert sorted(DECLARED - set(readers_of_each_flag())) == []


def test_each_flag_is_read_in_one_module_of_the_worker():
    assert {name: modules for name, modules in readers_of_each_flag().items() if len(modules) > 1} == {}


def test_no_module_maps_flags_by_hand_into_another():
    assert hand_mappings() == []


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


# the mapping this test stands against: the CLI read the task's flags and handed them to build_task, whose
# parameters repeated them with defaults of their own
OLD_CLI = """
def task_from_invocation(invocation):
    return build_task(
        invocation.task,
        template=invocation.template,
        system_prompt=invocation.system_prompt,
        schema=_load_schema(invocation.schema) if invocation.schema else None,
        categories=invocation.categories,
        entity_types=invocation.entity_types,
        max_tokens=invocation.max_tokens,
    )
"""
OLD_TASKS = """
def build_task(name, *, template=None, system_prompt=None, schema=None, categories=None, entity_types=None,
               max_tokens=None):
    return name, template, system_prompt, schema, categories, entity_types, max_tokens
"""


@pytest.mark.parametrize(
    ("modules", "mappings"),
    [
        (
            {"cli.py": OLD_CLI, "tasks.py": OLD_TASKS},
            [f"cli.py: build_task({name}=...)" for name in
             ("template", "system_prompt", "categories", "entity_types", "max_tokens")],
        ),
        # the flag's use, in the module that reads it: no mapping
        ({"tasks.py": OLD_TASKS + OLD_CLI}, []),
        # one flag to a parameter that declares its default again
        (
            {"clients.py": "class ChatRequest:\n    temperature: float = 0.0\n",
             "engine.py": "ChatRequest(user=user, temperature=self.invocation.temperature)\n"},
            ["engine.py: ChatRequest(temperature=...)"],
        ),
        # one flag to a general helper's parameter, which has no default: the flag's use
        (
            {"retry.py": "class RetryPolicy:\n    max_attempts: int\n    base_delay: float = 0.5\n",
             "engine.py": "RetryPolicy(max_attempts=invocation.max_attempts)\n"},
            [],
        ),
        # a value handed to a module the worker does not own (the formats the stage shares): no mapping
        ({"cli.py": "RecordReader(invocation.input, id_field=invocation.id_field)\n"}, []),
        # the invocation itself handed on
        ({"cli.py": "build_task(invocation)\n", "tasks.py": "def build_task(invocation): ...\n"}, []),
    ],
)  # fmt: skip
def test_a_hand_mapping_is_found(tmp_path, modules, mappings):
    for name, source in modules.items():
        (tmp_path / name).write_text(source)
    assert hand_mappings(tmp_path) == mappings


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
        # the fields the prompt leaves out, read for the reader's use elsewhere: not a second use
        (
            {
                "cli.py": EVERY_FLAG_READ,
                "tasks.py": "def unprompted_fields(invocation):\n    return (invocation.id_field,)\n",
            },
            set(),
            {},
        ),
    ],
)
def test_what_breaks_the_path_is_found(tmp_path, modules, unread, read_twice):
    for name, source in modules.items():
        (tmp_path / name).write_text(source)
    readers = readers_of_each_flag(tmp_path)
    assert DECLARED - set(readers) == unread
    assert {name: found for name, found in readers.items() if len(found) > 1} == read_twice
