"""The shape of a result, written once: each task's answer schema (what the server is held to and the worker
validates), the enrichment as published (the answer and what the worker adds to it), and the result's meta.

The worker builds its tasks from :func:`answer_schema`; the extraction types a Parquet output's columns from
:func:`published_schema` and :data:`META_SCHEMA`, so every shard of every run has the same columns.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from llm_etl_provider.contract.invocation import TASK_NAMES, coerce_settings
from llm_etl_provider.contract.provenance import PROVENANCE
from llm_etl_provider.contract.reuse import CONTENT_SHA256, RECORD_SHA256, REUSED
from llm_etl_provider.contract.summary import RESULT_LABEL

RESULT_FIELDS = ("id", "line", "task", "enrichment", "meta")  # a result line's own fields
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
MAX_ENTITIES = 16  # per record: a small model asked for more lists the same entity again
TEXT_ANSWER_FIELD = "text"
# A free-text answer's enrichment: {"text": <the answer>}
TEXT_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {TEXT_ANSWER_FIELD: {"type": "string", "minLength": 1}},
    "required": [TEXT_ANSWER_FIELD],
    "additionalProperties": False,
}
# where the entities task found each entity in the prompt's text: character offsets, null where it did not
ENTITY_SPAN = {"start": {"type": ["integer", "null"]}, "end": {"type": ["integer", "null"]}}

_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INTEGER = {"type": ["integer", "null"]}
# A result line's ``meta``, as the worker writes it
META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "latency_s": {"type": "number"},
        "prompt_tokens": _NULLABLE_INTEGER,
        "completion_tokens": _NULLABLE_INTEGER,
        "finish_reason": _NULLABLE_STRING,
        "attempts": {"type": "integer"},
        PROVENANCE: _NULLABLE_STRING,
        RECORD_SHA256: {"type": "string"},
        CONTENT_SHA256: {"type": "string"},
        REUSED: {"type": "boolean"},
        RESULT_LABEL: _NULLABLE_STRING,
    },
    "additionalProperties": False,
}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _choices(values: Sequence[str]) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "enum": list(values)}, "uniqueItems": True,
            "maxItems": len(values)}  # fmt: skip


def answer_schema(
    task: str,
    *,
    categories: Sequence[str] = (),
    entity_types: Sequence[str] = (),
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON schema of ``task``'s answer: the catalogue's for its tasks (``categories`` for tags,
    ``entity_types`` for entities), ``schema`` for a custom task, free text (:data:`TEXT_ANSWER_SCHEMA`) for
    a custom task without one. ValueError for a task of no such name."""
    if task == "sentiment":
        return _object({"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]}})
    if task == "tags":
        return _object({"tags": _choices(categories)})
    if task == "moderation":
        return _object({"flagged": {"type": "boolean"}, "categories": _choices(MODERATION_CATEGORIES)})
    if task == "entities":
        entity = _object({
            "text": {"type": "string", "minLength": 1, "maxLength": 200},
            "type": {"type": "string", "enum": list(entity_types)},
        })  # fmt: skip
        return _object({"entities": {"type": "array", "maxItems": MAX_ENTITIES, "items": entity}})
    if task == "custom":
        return schema or TEXT_ANSWER_SCHEMA  # {} too: as the worker always read it
    raise ValueError(f"no task {task!r}")


def published_schema(task: str, **answer: Any) -> dict[str, Any]:
    """The JSON schema of ``task``'s enrichment as a result publishes it: its answer (:func:`answer_schema`,
    with the same keywords), and each entity's span for the entities task."""
    schema = answer_schema(task, **answer)
    if task != "entities":
        return schema
    published: dict[str, Any] = copy.deepcopy(schema)  # the answer's schema stays as it is
    published["properties"]["entities"]["items"]["properties"].update(ENTITY_SPAN)
    return published


def inline_schema(value: Any) -> dict[str, Any] | None:
    """A custom task's schema as a setting holds it (a dict, or inline JSON); None for none, a file's path
    (read where the worker runs) or text that is not a JSON object."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


# the worker settings that shape an answer
ANSWER_SETTINGS = ("task", "categories", "entity_types", "schema")


def settings_schema(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The published schema (:func:`published_schema`) of the enrichment that worker ``settings`` ask for, as
    an operator holds them (templated text included); None where it cannot be known here: a custom schema
    given as a file's path (read where the worker runs), a task or value the worker would refuse."""
    try:
        coerced = coerce_settings({name: settings.get(name) for name in ANSWER_SETTINGS})
    except ValueError:
        return None
    task, given = coerced["task"], coerced["schema"]
    schema = inline_schema(given)
    if task not in TASK_NAMES or (given is not None and schema is None):
        return None
    return published_schema(
        task,
        categories=coerced["categories"] or (),
        entity_types=coerced["entity_types"] or (),
        schema=schema,
    )
