"""The worker's invocation: one typed object builds the pod's argv and defines the worker's parser."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_etl_provider.contract.invocation import (
    API_STYLES,
    INPUT_FORMATS,
    RESPONSE_FORMATS,
    TASK_NAMES,
    WORKER_SETTINGS,
    WorkerInvocation,
    build_parser,
    coerce_settings,
    default_of,
    parse_argv,
    setting_schema,
)

REQUIRED: dict[str, Any] = {
    "task": "sentiment",
    "input": Path("in.jsonl"),
    "output": "log",
    "llm_url": "http://h:1",
    "model": "m",
}

# Text the command line can carry (no NUL), a leading "-" included: such a value goes as --flag=value.
# "--" alone is refused by to_argv (Python 3.11's argparse drops it from an option's value): tested below
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1).filter(
    lambda value: value != "--"
)
names = st.lists(
    st.text("abcdefgh xyz", min_size=1).map(str.strip).filter(lambda s: s and "," not in s), max_size=4
).map(tuple)
invocations = st.builds(
    WorkerInvocation,
    task=st.sampled_from(TASK_NAMES),
    template=st.none() | text,
    system_prompt=st.none() | text,
    schema=st.none() | text,
    categories=st.none() | names.filter(bool),
    entity_types=names.filter(bool),
    max_tokens=st.none() | st.integers(1, 10_000),
    input=text.map(Path),
    input_format=st.sampled_from(INPUT_FORMATS),
    id_field=text,
    label_field=st.none() | text,
    output=text,
    dead_letter=st.none() | text.map(Path),
    key_file=st.none() | text.map(Path),
    run_id=text,
    shard=st.integers(0, 10_000),
    checkpoint=st.none() | text.map(Path),
    checkpoint_every=st.integers(1, 10_000),
    max_record_bytes=st.integers(1, 1 << 30),
    line_offset=st.integers(0, 1 << 40),
    duplicates=st.none() | text.map(Path),
    llm_url=text,
    api=st.sampled_from(API_STYLES),
    model=text,
    response_format=st.sampled_from(RESPONSE_FORMATS),
    temperature=st.floats(0, 2, allow_nan=False),
    concurrency=st.none() | st.integers(1, 512),
    request_timeout=st.floats(0.1, 1e4, allow_nan=False),
    max_attempts=st.integers(1, 20),
    max_dead_letter_ratio=st.floats(0, 1, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(invocations)
def test_the_argv_parses_back_into_the_same_invocation(invocation):
    assert parse_argv(invocation.to_argv()) == invocation


def test_a_value_argparse_cannot_carry_is_refused_by_name():
    argv = [
        "--task",
        "sentiment",
        "--input",
        "in",
        "--output",
        "log",
        "--llm-url",
        "http://x",
        "--model",
        "m",
    ]
    invocation = parse_argv(argv)
    with pytest.raises(ValueError, match="--model"):
        dataclasses.replace(invocation, model="--").to_argv()


def test_a_value_that_looks_like_a_flag_stays_a_value():
    invocation = WorkerInvocation(**REQUIRED, system_prompt="- answer tersely", template="--x")
    argv = invocation.to_argv()
    assert "--system-prompt=- answer tersely" in argv
    assert parse_argv(argv) == invocation


def test_every_field_is_a_flag_of_the_worker_with_the_same_default():
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(WorkerInvocation)}
    assert set(actions) == set(fields)
    for name, action in actions.items():
        assert action.option_strings == ["--" + name.replace("_", "-")]
        if fields[name].default is not dataclasses.MISSING:
            assert action.default == fields[name].default, name


def test_required_flags_and_the_defaults_a_bare_invocation_gets():
    with pytest.raises(SystemExit):
        parse_argv(["--task", "sentiment"])
    invocation = parse_argv(
        ["--task", "tags", "--input", "in.csv", "--output", "log", "--llm-url", "http://h", "--model", "m"]
    )
    assert invocation.concurrency is None  # auto
    assert invocation.checkpoint_every == 100
    assert invocation.max_dead_letter_ratio == 0.1
    assert invocation.max_record_bytes == default_of("max_record_bytes")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "0"], "must be at least 1"),
        (["--max-dead-letter-ratio", "1.5"], "must lie between 0 and 1"),
        (["--checkpoint-every", "x"], "invalid int value"),
        (["--api", "grpc"], "invalid choice"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(argv, message, capsys):
    base = ["--task", "tags", "--input", "i", "--output", "log", "--llm-url", "u", "--model", "m"]
    with pytest.raises(SystemExit) as info:
        parse_argv([*base, *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_settings_as_an_operator_holds_them_become_field_values():
    values = coerce_settings(
        {
            "concurrency": "None",  # a templated empty Param
            "checkpoint_every": None,
            "max_attempts": "",
            "schema": {"type": "object"},
            "categories": ["a", "b"],
            "max_dead_letter_ratio": "0.2",
        }
    )
    assert values == {
        "concurrency": None,
        "schema": '{"type": "object"}',
        "categories": ("a", "b"),
        "max_dead_letter_ratio": 0.2,
        "checkpoint_every": 100,
        "max_attempts": 4,
    }
    assert WORKER_SETTINGS[:2] == ("task", "template")
    assert default_of("task") == "sentiment"


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"concurrency": "many"}, "concurrency 'many' is not usable"),
        ({"task": "summarise"}, "task must be one of"),
        ({"input": "x"}, "'input' is not a worker setting"),
        ({"max_dead_letter_ratio": 2}, "max_dead_letter_ratio 2 is not usable"),
    ],
)
def test_bad_settings_are_refused(settings_, message):
    with pytest.raises(ValueError, match=message):
        coerce_settings(settings_)


def test_the_worker_command_line_is_the_derived_parser():
    helped = subprocess.run(
        [sys.executable, "-m", "llm_etl_provider.worker.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in ("--task", "--duplicates", "--max-dead-letter-ratio", "--temperature"):
        assert name in helped.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"checkpoint_every": 0}, "--checkpoint-every 0: must be at least 1"),
        ({"concurrency": 0}, "--concurrency 0: must be at least 1"),
        ({"max_attempts": -1}, "--max-attempts -1: must be at least 1"),
        ({"max_dead_letter_ratio": 1.5}, "--max-dead-letter-ratio 1.5: must lie between 0 and 1"),
        ({"task": "summarise"}, "--task must be one of sentiment, tags"),
        ({"api": "grpc"}, "--api must be one of openai, ollama, not 'grpc'"),
    ],
)
def test_an_invocation_made_in_code_is_held_to_its_flags_ranges(values, message):
    """A flag's range is written once, in its declaration: an invocation made without the parser (the
    pod's, a test's, the engine's settings) is refused as the parser would refuse the argv."""
    with pytest.raises(ValueError, match=message):
        WorkerInvocation(**{**REQUIRED, **values})


def test_a_settings_schema_is_its_declaration():
    """A form (the example DAG's Params) takes a setting's type, choices and range from here."""
    assert setting_schema("max_dead_letter_ratio") == {"type": "number", "minimum": 0, "maximum": 1}
    assert setting_schema("concurrency") == {"type": ["null", "integer"], "minimum": 1}
    assert setting_schema("task") == {"type": "string", "enum": list(TASK_NAMES)}
    assert setting_schema("template") == {"type": ["null", "string"]}
    assert setting_schema("categories") == {"type": ["null", "array"], "items": {"type": "string"}}
    assert setting_schema("entity_types") == {"type": "array", "items": {"type": "string"}}
    with pytest.raises(ValueError, match="'input' is not a worker setting"):
        setting_schema("input")


@pytest.mark.parametrize("name", WORKER_SETTINGS)
def test_a_settings_schema_takes_its_default_and_refuses_what_the_worker_refuses(name):
    schema = setting_schema(name)
    jsonschema.validate(json.loads(json.dumps(default_of(name))), schema)  # as a form's JSON holds it
    for bound, past in (("minimum", -1), ("maximum", 1)):
        if bound in schema:
            value = schema[bound] + past
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(value, schema)
            with pytest.raises(ValueError, match="must"):
                WorkerInvocation(**{**REQUIRED, name: value})
