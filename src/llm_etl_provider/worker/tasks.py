"""The task catalogue: each task has a system prompt, a user template over record fields and a JSON schema.

:func:`build_task` reads the task's flags (``--task``, ``--template``, ``--schema`` ...) from the invocation
itself: a new task flag is declared in :mod:`llm_etl_provider.contract.invocation` and read here, nowhere
else.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from llm_etl_provider.contract.invocation import DEFAULT_TEMPLATE, TASK_NAMES, WorkerInvocation
from llm_etl_provider.formats import strict_json
from llm_etl_provider.worker.exceptions import ConfigurationError, InvalidOutputError, MissingFieldError

DEFAULT_CATEGORIES = (
    "effectiveness",
    "side effects",
    "dosage",
    "cost",
    "mental health",
    "pain",
    "sleep",
    "weight",
    "skin",
    "other",
)
DEFAULT_ENTITY_TYPES = ("condition", "drug", "symptom", "dosage")
MODERATION_CATEGORIES = (
    "harassment",
    "hate",
    "self-harm",
    "sexual",
    "violence",
    "illicit-drugs",
    "medical-misinformation",
    "spam",
)


class PromptTemplate:
    """A user-prompt template with ``{field}`` placeholders over record fields.

    Only plain field names are allowed: no attribute access, indexing, conversions or format specs, so a
    template cannot reach into Python objects. ``{{`` and ``}}`` stand for literal braces.
    """

    def __init__(self, template: str) -> None:
        self.template = template
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
            raise ConfigurationError(f"template {template!r} uses no record field: add one, such as {{text}}")
        self.fields = tuple(dict.fromkeys(fields))

    def render(self, record: Mapping[str, Any]) -> str:
        values: dict[str, str] = {}
        for name in self.fields:
            value = record.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise MissingFieldError(name)
            values[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return self.template.format_map(values)


@dataclass(frozen=True)
class TaskSpec:
    """One enrichment task: how to ask the model, and what a valid answer looks like."""

    name: str
    system_prompt: str
    template: PromptTemplate
    schema: dict[str, Any]
    max_tokens: int
    postprocess: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
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
            [self.name, self.system_prompt, self.template.template, self.schema, self.max_tokens],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def parse(self, content: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Parse and validate the model's answer, raising :class:`InvalidOutputError` without echoing it."""
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
    prompt_template = PromptTemplate(template or DEFAULT_TEMPLATE)
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
            schema={
                "type": "object",
                "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]}},
                "required": ["sentiment"],
                "additionalProperties": False,
            },
            max_tokens=max_tokens or 24,
        )
    if name == "tags":
        allowed = _string_list(categories or DEFAULT_CATEGORIES, "category")
        return TaskSpec(
            name=name,
            system_prompt=system_prompt
            or (
                "You tag texts with categories. Choose every category that applies from this list: "
                + ", ".join(allowed)
                + '. Answer only with JSON: {"tags": ["..."]}.'
            ),
            template=prompt_template,
            schema={
                "type": "object",
                "properties": {
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "enum": allowed},
                        "uniqueItems": True,
                        "maxItems": len(allowed),
                    }
                },
                "required": ["tags"],
                "additionalProperties": False,
            },
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
            schema={
                "type": "object",
                "properties": {
                    "flagged": {"type": "boolean"},
                    "categories": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(MODERATION_CATEGORIES)},
                        "uniqueItems": True,
                        "maxItems": len(MODERATION_CATEGORIES),
                    },
                },
                "required": ["flagged", "categories"],
                "additionalProperties": False,
            },
            max_tokens=max_tokens or 96,
        )
    if name == "entities":
        types = _string_list(entity_types or DEFAULT_ENTITY_TYPES, "entity type")
        fields = prompt_template.fields
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
            schema={
                "type": "object",
                "properties": {
                    "entities": {
                        "type": "array",
                        "maxItems": 16,
                        "items": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string", "minLength": 1, "maxLength": 200},
                                "type": {"type": "string", "enum": types},
                            },
                            "required": ["text", "type"],
                            "additionalProperties": False,
                        },
                    }
                },
                "required": ["entities"],
                "additionalProperties": False,
            },
            max_tokens=max_tokens or 384,
            postprocess=lambda answer, record: _locate_entities(answer, record, fields),
        )
    if name == "custom":
        if not system_prompt or schema is None or template is None:
            raise ConfigurationError("task 'custom' needs --system-prompt, --template and --schema")
        return TaskSpec(
            name=name,
            system_prompt=system_prompt,
            template=prompt_template,
            schema=schema,
            max_tokens=max_tokens or 256,
        )
    raise ConfigurationError(f"unknown task {name!r}: choose one of {', '.join(TASK_NAMES)}")
