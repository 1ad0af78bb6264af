"""The worker's invocation: every ``llm-etl-worker`` flag with its type, default and help, written once.

The pod's argv is built from a :class:`WorkerInvocation` (:meth:`~WorkerInvocation.to_argv`) and the worker's
parser is derived from the same fields (:func:`build_parser`), so that no flag is spelt, typed or defaulted
twice; the worker reads each flag from the invocation itself. A flag's range (``minimum``, ``maximum``) and
choices are declared with it and checked for every invocation however it is made. The fields marked as
settings (:data:`WORKER_SETTINGS`) are what a DAG author chooses through ``LLMEnrichmentOperator``; the pod,
or local execution, fills in the rest (paths, run, shard, server). :func:`setting_schema` gives a setting's
type, choices and range as JSON schema, for a form (the example DAG's Params).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

TASK_NAMES = ("sentiment", "tags", "moderation", "entities", "custom")
# What a task needs beyond the catalogue: no list of categories fits any data, and a custom task is its own
# custom without a schema: the answer is free text, {"text": ...}
TASK_NEEDS: dict[str, tuple[str, ...]] = {"tags": ("categories",), "custom": ("system_prompt",)}
# The entities task's types where none are given: the classic named-entity types, found in any text
DEFAULT_ENTITY_TYPES = ("person", "organization", "location", "date")
RecordFormat = Literal["jsonl", "csv"]
RECORD_FORMATS: tuple[str, ...] = get_args(RecordFormat)
CARRIED_FIELD = "input"  # a result line's carried input fields (carry_fields)
LINE_IDS = "#line"  # id_field: no field names the records, their input line does (an input without ids)
ALL_FIELDS = "*"  # carry_fields: every field of the record
AUTO_FORMAT = "auto"  # --input-format auto: the format the file name implies
INPUT_FORMATS = (AUTO_FORMAT, *RECORD_FORMATS)
ApiStyle = Literal["openai", "ollama"]
ResponseFormat = Literal["json_schema", "json_object"]
API_STYLES: tuple[str, ...] = get_args(ApiStyle)
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
# An ``llm_etl`` connection that names no API: Ollama's own (the worker's --api defaults to openai)
CONNECTION_API: ApiStyle = "ollama"
AUTO_CONCURRENCY = "auto"  # --concurrency auto: the worker finds it (the pod's worker is given one)
LOG_OUTPUT = "log"  # --output log: sealed frames on stdout
OBJECT_OUTPUT = "object"  # --output object: sealed frames as part objects (contract.object_transport)
DEFAULT_MAX_RECORD_BYTES = 256 * 1024
API_KEY_ENV = "LLM_ETL_API_KEY"  # an optional bearer key for the LLM server, never an argument
KEY_ENV = "LLM_ETL_KEY"  # the run's frame key, where no key file is given
RUN_ID_ENV = "LLM_ETL_RUN_ID"
# Requests the worker keeps in flight per server slot (sequence): one served and one waiting, so that no slot
# idles between an answer and the next request. The pod's worker runs at this times the server's parallelism.
REQUESTS_PER_SLOT = 2


def concurrency(text: str) -> int | None:
    return None if text == AUTO_CONCURRENCY else int(text)


def name_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _joined(values: Sequence[Any]) -> str:
    return ",".join(map(str, values))


@dataclass(frozen=True)
class Flag:
    """How one field of the invocation appears on the command line."""

    help: str
    group: str
    parse: Callable[[str], Any] = str
    show: Callable[[Any], str] = str
    choices: tuple[str, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    setting: bool = False
    operator_default: Any = None  # where the worker has no default, the operator's

    def read(self, text: str) -> Any:
        """The value ``text`` stands for, refused (:class:`argparse.ArgumentTypeError`) outside the range."""
        value = self.parse(text)
        low, high = self.minimum, self.maximum
        if value is None or ((low is None or value >= low) and (high is None or value <= high)):
            return value
        if high is None:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        if low is None:
            raise argparse.ArgumentTypeError(f"must be at most {high}")
        raise argparse.ArgumentTypeError(f"must lie between {low} and {high}")


def _flag(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    return field(default=default, default_factory=factory, metadata={"flag": Flag(**spec)})


_TASK, _IO, _LLM = "task", "input and output", "LLM server"


@dataclass(frozen=True, kw_only=True)
class WorkerInvocation:
    """One run of ``llm-etl-worker``. Each field is the flag of its name (``llm_url``: ``--llm-url``)."""

    task: str = _flag(
        group=_TASK,
        choices=TASK_NAMES,
        help="the enrichment task",
        setting=True,
        operator_default="sentiment",
    )
    template: str | None = _flag(
        None,
        group=_TASK,
        setting=True,
        help="user prompt over record fields, e.g. '{review}' (default: the whole record but its id, a "
        "'name: value' line per field)",
    )
    system_prompt: str | None = _flag(
        None, group=_TASK, setting=True, help="system prompt (required for custom; overrides the catalogue's)"
    )
    schema: str | None = _flag(
        None,
        group=_TASK,
        setting=True,
        help="custom: the answers' JSON schema, a file path or inline JSON; none: free-text answers",
    )
    categories: tuple[str, ...] | None = _flag(
        None, group=_TASK, parse=name_list, show=_joined, setting=True,
        help="tags: comma-separated categories to choose from (required)",
    )  # fmt: skip
    entity_types: tuple[str, ...] = _flag(
        DEFAULT_ENTITY_TYPES, group=_TASK, parse=name_list, show=_joined, setting=True,
        help="entities: comma-separated entity types",
    )  # fmt: skip
    max_tokens: int | None = _flag(
        None, group=_TASK, parse=int, minimum=1, setting=True, help="answer length limit (default per task)"
    )

    input: Path = _flag(group=_IO, parse=Path, help="JSONL or CSV file, plain or gzip")
    input_format: str = _flag(AUTO_FORMAT, group=_IO, choices=INPUT_FORMATS, help="the input's format")
    id_field: str = _flag(
        "id", group=_IO, setting=True,
        help=f"the field that identifies a record; {LINE_IDS}: its input line (an input without ids)",
    )  # fmt: skip
    label_field: str | None = _flag(
        None, group=_IO, setting=True,
        help="a field holding a known label, copied into each result's meta.label (for the run report)",
    )  # fmt: skip
    carry_fields: tuple[str, ...] | None = _flag(
        None, group=_IO, parse=name_list, show=_joined, setting=True,
        help=f"input fields copied into each result's '{CARRIED_FIELD}' beside its enrichment, "
        f"comma-separated, or '{ALL_FIELDS}' for every field (default: none)",
    )  # fmt: skip
    output: str = _flag(
        group=_IO,
        help=(
            f"results file (JSONL), '{LOG_OUTPUT}': sealed frames on stdout (results, dead letters), or "
            f"'{OBJECT_OUTPUT}': sealed frames as part objects (with --object-transport)"
        ),
    )
    dead_letter: Path | None = _flag(
        None, group=_IO, parse=Path, help=f"dead-letter file (JSONL); not used with --output {LOG_OUTPUT}"
    )
    object_transport: Path | None = _flag(
        None, group=_IO, parse=Path,
        help=f"--output {OBJECT_OUTPUT}: the shard's pre-signed URLs (--input: where its range goes)",
    )  # fmt: skip
    key_file: Path | None = _flag(
        None, group=_IO, parse=Path, help=f"--output log: the run's key file (default: ${KEY_ENV})"
    )
    run_id: str = _flag(
        factory=lambda: os.environ.get(RUN_ID_ENV, "run"),
        group=_IO,
        help=f"--output log: the run id (default: ${RUN_ID_ENV}, else 'run')",
    )
    shard: int = _flag(0, group=_IO, parse=int, help="--output log: the shard number")
    attempt: int = _flag(
        1, group=_IO, parse=int, minimum=1,
        help="--output log or object: the try of the shard's enrichment this is (sealed in the trailer)",
    )  # fmt: skip
    spool: Path | None = _flag(
        None, group=_IO, parse=Path,
        help="--output log: keep frames here for a resume (default: the checkpoint + .frames)",
    )  # fmt: skip
    checkpoint: Path | None = _flag(
        None, group=_IO, parse=Path, help="checkpoint file; a restart with it resumes the run"
    )
    heartbeat: Path | None = _flag(
        None, group=_IO, parse=Path,
        help="a file touched every 10 s while the worker runs (for liveness probes)",
    )  # fmt: skip
    checkpoint_every: int = _flag(
        100, group=_IO, parse=int, minimum=1, setting=True, help="records between checkpoints"
    )
    max_record_bytes: int = _flag(
        DEFAULT_MAX_RECORD_BYTES, group=_IO, parse=int, minimum=1, setting=True,
        help="larger records are dead-lettered",
    )  # fmt: skip
    line_offset: int = _flag(0, group=_IO, parse=int, help="added to reported line numbers (for shards)")
    duplicates: Path | None = _flag(
        None, group=_IO, parse=Path,
        help="the stage's file of input lines whose id an earlier shard already holds (dead-lettered)",
    )  # fmt: skip
    reused: Path | None = _flag(
        None, group=_IO, parse=Path,
        help="the stage's file of earlier results of this input's records, published in place of a request "
        "where the record's content (record, prompts, schema, model, sampling) is unchanged",
    )  # fmt: skip
    summary: Path | None = _flag(
        None, group=_IO, parse=Path, help="also write the final summary to this JSON file"
    )

    llm_url: str = _flag(group=_LLM, help="server root, e.g. http://127.0.0.1:11434")
    api: ApiStyle = _flag("openai", group=_LLM, choices=API_STYLES, help="the server's API")
    model: str = _flag(group=_LLM, help="the model the server serves")
    model_digest: str | None = _flag(
        None, group=_LLM,
        help="the model's digest (sha256:<hex> of its file, or its image's), for each result's provenance",
    )  # fmt: skip
    response_format: ResponseFormat = _flag(
        "json_schema", group=_LLM, choices=RESPONSE_FORMATS,
        help="openai: how to send the schema (json_object for llama-cpp-python's server)",
    )  # fmt: skip
    keep_alive: str = _flag("10m", group=_LLM, help="ollama: how long the model stays loaded")
    temperature: float = _flag(
        0.0, group=_LLM, parse=float, setting=True, help="sampling temperature of a first attempt"
    )
    concurrency: int | None = _flag(
        None, group=_LLM, parse=concurrency, minimum=1, setting=True,
        help=f"requests in flight, or {AUTO_CONCURRENCY} (default)",
    )  # fmt: skip
    request_timeout: float = _flag(120.0, group=_LLM, parse=float, setting=True, help="seconds per request")
    ready_timeout: float = _flag(300.0, group=_LLM, parse=float, help="seconds to wait for the server")
    max_attempts: int = _flag(
        4, group=_LLM, parse=int, minimum=1, setting=True, help="attempts per record, retries included"
    )
    max_dead_letter_ratio: float = _flag(
        0.1, group=_LLM, parse=float, minimum=0, maximum=1, setting=True,
        help="fail the run above this share of dead letters",
    )  # fmt: skip
    progress_interval: float = _flag(10.0, group=_LLM, parse=float, help="seconds between progress lines")

    def __post_init__(self) -> None:
        """Refuse a value that its flag would not take (out of range, not a choice), as the parser would."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            spec = _spec(item)
            try:
                spec.read(spec.show(value))
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"{flag_name(item.name)} {value!r}: {exc}") from None
            if spec.choices and value not in spec.choices:
                raise ValueError(
                    f"{flag_name(item.name)} must be one of {', '.join(spec.choices)}, not {value!r}"
                )

    def to_argv(self) -> list[str]:
        """The command-line arguments that :func:`parse_argv` turns back into this invocation."""
        argv: list[str] = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None or value == ():
                continue
            text = _spec(item).show(value)
            if text == "--":  # Python 3.11's argparse drops it from an option's value, in any form
                raise ValueError(f"{flag_name(item.name)}: the value '--' cannot be passed to the worker")
            # a value that starts with "-" would read as a flag of its own
            argv += (
                [f"{flag_name(item.name)}={text}"] if text.startswith("-") else [flag_name(item.name), text]
            )
        return argv


def _spec(item: dataclasses.Field[Any]) -> Flag:
    spec: Flag = item.metadata["flag"]
    return spec


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


_FIELDS = {item.name: item for item in dataclasses.fields(WorkerInvocation)}
WORKER_SETTINGS: tuple[str, ...] = tuple(name for name, item in _FIELDS.items() if _spec(item).setting)


def default_of(name: str) -> Any:
    """The default of a field: the worker's, or for a setting the worker requires, the operator's."""
    item = _FIELDS[name]
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return _spec(item).operator_default if item.default is dataclasses.MISSING else item.default


_JSON_TYPES: dict[Any, str] = {str: "string", Path: "string", int: "integer", float: "number", tuple: "array"}
_ITEMS: dict[str, Any] = {"array": {"type": "string"}}  # the settings' lists are lists of names


def setting_schema(name: str) -> dict[str, Any]:
    """A worker setting's type, choices and range as JSON schema (``type``, ``enum``, ``minimum``,
    ``maximum``), for a form that offers it: a DAG's Params re-spell none of them."""
    if name not in WORKER_SETTINGS:
        raise ValueError(f"{name!r} is not a worker setting; choose from {', '.join(WORKER_SETTINGS)}")
    hint = get_type_hints(WorkerInvocation)[name]
    kinds = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    nullable = NoneType in kinds
    (kind,) = (kind for kind in kinds if kind is not NoneType)
    # a Literal's type is its values'; a generic's (tuple[str, ...]) its origin's
    json_type = _JSON_TYPES[
        type(get_args(kind)[0]) if get_origin(kind) is Literal else get_origin(kind) or kind
    ]
    spec = _spec(_FIELDS[name])
    schema: dict[str, Any] = {"type": ["null", json_type] if nullable else json_type}
    if json_type in _ITEMS:
        schema["items"] = _ITEMS[json_type]
    if spec.choices:
        schema["enum"] = [None, *spec.choices] if nullable else list(spec.choices)
    if spec.minimum is not None:
        schema["minimum"] = spec.minimum
    if spec.maximum is not None:
        schema["maximum"] = spec.maximum
    return schema


def unmet_task_needs(settings: Mapping[str, Any]) -> str | None:
    """Why ``settings`` (field values, :func:`coerce_settings`'s) cannot make their task, naming what to
    give (:data:`TASK_NEEDS`); None where they can."""
    task = settings.get("task")
    missing = [name for name in TASK_NEEDS.get(task or "", ()) if not settings.get(name)]
    if not missing:
        return None
    given = ", ".join(f"{name} ({flag_name(name)})" for name in missing)
    return f"task {task!r} needs {given}: " + (
        "the categories its answers choose from, e.g. billing,shipping,returns"
        if missing == ["categories"]
        else "give them, or choose a task of the catalogue"
    )


def is_unset(value: Any) -> bool:
    """Whether a templated setting is unset: None, or what an unset Param renders to (``""``, ``"None"``)."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def coerce_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn settings as an operator holds them (templated text, lists, a schema dict) into field values.

    None, and the text an unset Param renders to (``""``, ``"None"``), stand for the setting's default. Raises
    ValueError naming the setting when a value does not parse.
    """
    coerced: dict[str, Any] = {}
    for name, value in values.items():
        if name not in WORKER_SETTINGS:
            raise ValueError(f"{name!r} is not a worker setting; choose from {', '.join(WORKER_SETTINGS)}")
        spec = _spec(_FIELDS[name])
        if is_unset(value):
            coerced[name] = default_of(name)
            continue
        if name == "schema" and not isinstance(value, str):
            text = json.dumps(value)
        elif isinstance(value, list | tuple):
            text = _joined(value)
        else:
            text = str(value)
        try:
            coerced[name] = spec.read(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"{name} {value!r} is not usable: {exc}") from None
        if spec.choices and coerced[name] not in spec.choices:
            raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, not {value!r}")
    return coerced


def _argparse_type(spec: Flag) -> Callable[[str], Any]:
    """``spec.read`` named as its parse function, which argparse's errors name ("invalid int value")."""

    def read(text: str) -> Any:
        return spec.read(text)

    read.__name__ = spec.parse.__name__
    return read


def build_parser() -> argparse.ArgumentParser:
    """The worker's command-line parser, derived from :class:`WorkerInvocation`."""
    parser = argparse.ArgumentParser(
        prog="llm-etl-worker",
        description="Enrich records with a local LLM server. Progress and the summary go to stderr.",
    )
    groups: dict[str, Any] = {}
    for item in dataclasses.fields(WorkerInvocation):
        spec = _spec(item)
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        options: dict[str, Any] = {"dest": item.name, "type": _argparse_type(spec), "help": spec.help}
        if spec.choices:
            options["choices"] = spec.choices
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = default_of(item.name)
        groups[spec.group].add_argument(flag_name(item.name), **options)
    return parser


def parse_argv(argv: Sequence[str] | None = None) -> WorkerInvocation:
    """Parse ``llm-etl-worker`` arguments (exit 2 with a usage message on bad ones, as argparse does)."""
    return WorkerInvocation(**vars(build_parser().parse_args(argv)))
