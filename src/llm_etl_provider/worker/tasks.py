"""The task catalogue: each task has a system prompt, a user template over record fields and a JSON schema.

:func:`build_task` reads the task's flags (``--task``, ``--template``, ``--schema`` ...) from the invocation
itself: a new task flag is declared in :mod:`llm_etl_provider.contract.invocation` and read here, nowhere
else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from llm_etl_provider.contract.answers import (
    MODERATION_CATEGORIES,
    TEXT_ANSWER_FIELD,
    answer_schema,
)
from llm_etl_provider.contract.invocation import TASK_NAMES, WorkerInvocation, unmet_task_needs
from llm_etl_provider.formats import strict_json
from llm_etl_provider.worker.exceptions import ConfigurationError, InvalidOutputError, MissingFieldError


def unprompted_fields(invocation: WorkerInvocation) -> tuple[str, ...]:
    """The record fields that a prompt of the whole record leaves out: the id, which says nothing about the
    record, and the label column, whose reference answer would be handed to the model it measures."""
    return (
        (invocation.id_field,)
        if invocation.label_field is None
        else (invocation.id_field, invocation.label_field)
    )


class PromptTemplate:
    """A user-prompt template with ``{field}`` placeholders over record fields, or, with no template, the
    whole record.

    Only plain field names are allowed: no attribute access, indexing, conversions or format specs, so a
    template cannot reach into Python objects. ``{{`` and ``}}`` stand for literal braces.

    Without a template the prompt is every field of the record but ``excluded`` (its id,
    :func:`unprompted_fields`), in the record's order, one ``name: value`` line each (a string as it is,
    another value as compact JSON), leaving out empty ones: any JSONL or CSV file can be enriched without
    naming its fields.

    :param template: the template, or None for the whole record
    :param excluded: the fields a prompt of the whole record leaves out
    """

    def __init__(self, template: str | None, *, excluded: Sequence[str] = ()) -> None:
        self.template = template
        self.excluded = frozenset(excluded)
        self.fields: tuple[str, ...] = ()
        if template is None:
            return
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigurationError(f"template {template!r} is not valid: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name or name.isdigit() or any(c in name for c in ".[]") or spec or conversion:
                raise ConfigurationError(
                    f"template placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} is not allowed: use plain field names such as {{review}}"
                )
            fields.append(name)
        if not fields:
            raise ConfigurationError(
                f"template {template!r} uses no record field: add one, such as {{review}}, or give no "
                "template to send the whole record"
            )
        self.fields = tuple(dict.fromkeys(fields))

    @property
    def key(self) -> Any:
        """What decides the prompts, for the task's fingerprint."""
        return self.template if self.template is not None else {"whole_record_but": sorted(self.excluded)}

    def fields_of(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """The fields of ``record`` that its prompt shows."""
        if self.template is not None:
            return self.fields
        return tuple(name for name in record if name not in self.excluded and not _empty(record[name]))

    def render(self, record: Mapping[str, Any]) -> str:
        """The user prompt for ``record``; :class:`MissingFieldError` where a field it needs is missing or
        empty (for the whole record: where no field but the left-out ones has a value)."""
        if self.template is None:
            shown = self.fields_of(record)
            if not shown:
                raise MissingFieldError(
                    None,
                    "the record has no field to put in the prompt beside "
                    + ", ".join(repr(name) for name in sorted(self.excluded)),
                )
            return "\n".join(f"{name}: {_compact(record[name])}" for name in shown)
        values: dict[str, str] = {}
        for name in self.fields:
            value = record.get(name)
            if _empty(value):
                raise MissingFieldError(name)
            values[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return self.template.format_map(values)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class TaskSpec:
    """One enrichment task: how to ask the model, and what a valid answer looks like."""

    name: str
    system_prompt: str
    template: PromptTemplate
    schema: dict[str, Any]
    max_tokens: int
    postprocess: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    # free text, unconstrained: the answer is the enrichment's ``text`` (``schema``: TEXT_ANSWER_SCHEMA)
    text_answer: bool = False
    _validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            Draft202012Validator.check_schema(self.schema)
        except SchemaError as exc:
            raise ConfigurationError(
                f"the output schema of task {self.name!r} is not valid: {exc.message}"
            ) from None
        if self.schema.get("type") != "object":
            raise ConfigurationError(f"the output schema of task {self.name!r} must describe a JSON object")
        object.__setattr__(self, "_validator", Draft202012Validator(self.schema))

    @property
    def fingerprint(self) -> str:
        """A digest of everything that decides the task's output, to tie checkpoints to it."""
        text = json.dumps(
            [self.name, self.system_prompt, self.template.key, self.schema, self.max_tokens],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The schema the server constrains the answer to; None for a free-text answer."""
        return None if self.text_answer else self.schema

    def parse(self, content: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Parse and validate the model's answer, raising :class:`InvalidOutputError` without echoing it."""
        if self.text_answer:
            if not content.strip():
                raise InvalidOutputError("the answer is empty")
            return {TEXT_ANSWER_FIELD: content}
        try:
            value = strict_json.loads(content)
        except strict_json.JsonValueError as exc:
            raise InvalidOutputError(f"the answer is not JSON ({exc})") from None
        value = drop_repeated_items(value, self.schema)
        error = next(iter(sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))), None)
        if error is not None:
            where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise InvalidOutputError(f"the answer does not match the schema at {where} ({error.validator})")
        return self.postprocess(value, record) if self.postprocess else value


def drop_repeated_items(value: Any, schema: dict[str, Any]) -> Any:
    """Drop repeats from arrays whose schema says ``uniqueItems``, recursively.

    Grammar-constrained decoding cannot enforce ``uniqueItems``, and small models repeat themselves; a
    repeat in a set-valued field carries no information, so it is dropped rather than failing the record.
    """
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: drop_repeated_items(v, properties[k]) if k in properties else v for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        value = [drop_repeated_items(v, items) for v in value] if isinstance(items, dict) else value
        if schema.get("uniqueItems"):
            unique: list[Any] = []
            for item in value:
                if item not in unique:
                    unique.append(item)
            return unique
    return value


def _string_list(values: Sequence[str], what: str) -> list[str]:
    cleaned = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if not cleaned:
        raise ConfigurationError(f"give at least one {what}")
    return cleaned


def _locate_entities(
    answer: dict[str, Any], record: Mapping[str, Any], fields: Sequence[str]
) -> dict[str, Any]:
    """Add the character span of each entity in the prompt's source text; null where the model invented it."""
    source = "\n".join(str(record.get(name, "")) for name in fields)
    lowered = source.lower()
    for entity in answer.get("entities", []):
        start = lowered.find(entity["text"].lower()) if entity["text"] else -1
        entity["start"], entity["end"] = (start, start + len(entity["text"])) if start >= 0 else (None, None)
    return answer


def _load_schema(value: str) -> dict[str, Any]:
    """``--schema``: inline JSON, or the path of a file that holds it."""
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the schema file {value}: {exc.strerror}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the schema is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(schema, dict):
        raise ConfigurationError("the schema must be a JSON object")
    return schema


def task_for(name: str, **flags: Any) -> TaskSpec:
    """The task that ``--task name`` with the task flags ``flags`` (``template="{review}"``) builds, for tools
    that run no worker (tests, benchmarks, reports): the invocation's paths and server are placeholders."""
    return build_task(WorkerInvocation(task=name, input=Path(), output="", llm_url="", model="", **flags))


def build_task(invocation: WorkerInvocation) -> TaskSpec:
    """Build the invocation's task: one from the catalogue, or a custom one from its system prompt, template
    and schema."""
    name, template, system_prompt = invocation.task, invocation.template, invocation.system_prompt
    categories, entity_types, max_tokens = (
        invocation.categories,
        invocation.entity_types,
        invocation.max_tokens,
    )
    schema = _load_schema(invocation.schema) if invocation.schema else None
    if (unmet := unmet_task_needs(dataclasses.asdict(invocation))) is not None:
        raise ConfigurationError(unmet)
    prompt_template = PromptTemplate(template or None, excluded=unprompted_fields(invocation))
    if name != "custom" and schema is not None:
        raise ConfigurationError(f"task {name!r} has a fixed schema; use --task custom to give your own")
    if name == "sentiment":
        return TaskSpec(
            name=name,
            system_prompt=system_prompt
            or (
                "You are a sentiment classifier. Read the text and decide whether its overall sentiment is "
                'positive, negative or neutral. Answer only with JSON: {"sentiment": "positive"}.'
            ),
            template=prompt_template,
            schema=answer_schema(name),
            max_tokens=max_tokens or 24,
        )
    if name == "tags":
        allowed = _string_list(categories or (), "category")
        return TaskSpec(
            name=name,
            system_prompt=system_prompt
            or (
                "You tag texts with categories. Choose every category that applies from this list: "
                + ", ".join(allowed)
                + '. Answer only with JSON: {"tags": ["..."]}.'
            ),
            template=prompt_template,
            schema=answer_schema(name, categories=allowed),
            max_tokens=max_tokens or 96,
        )
    if name == "moderation":
        return TaskSpec(
            name=name,
            system_prompt=system_prompt
            or (
                "You are a content moderator. Decide whether the text must be flagged and list the "
                "categories it falls under, from: "
                + ", ".join(MODERATION_CATEGORIES)
                + '. Answer only with JSON: {"flagged": false, "categories": []}.'
            ),
            template=prompt_template,
            schema=answer_schema(name),
            max_tokens=max_tokens or 96,
        )
    if name == "entities":
        types = _string_list(entity_types or (), "entity type")
        return TaskSpec(
            name=name,
            system_prompt=system_prompt
            or (
                "You extract named entities from a text. Entity types: "
                + ", ".join(types)
                + ". Copy each entity's text exactly as written. "
                'Answer only with JSON: {"entities": [{"text": "...", "type": "..."}]}.'
            ),
            template=prompt_template,
            schema=answer_schema(name, entity_types=types),
            max_tokens=max_tokens or 384,
            postprocess=lambda answer, record: _locate_entities(
                answer, record, prompt_template.fields_of(record)
            ),
        )
    if name == "custom":
        assert system_prompt is not None  # unmet_task_needs saw to it
        return TaskSpec(
            name=name,
            system_prompt=system_prompt,
            template=prompt_template,
            schema=answer_schema(name, schema=schema),
            max_tokens=max_tokens or 256,
            text_answer=schema is None,  # no schema: the answer is free text
        )
    raise ConfigurationError(f"unknown task {name!r}: choose one of {', '.join(TASK_NAMES)}")
