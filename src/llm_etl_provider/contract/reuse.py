"""Incremental runs: a record whose content has a result in an earlier output is not sent to the model again.

A record's *content* is the record itself and everything that decides its answer: the task, the model and its
digest, the prompts' and the schema's sha256 and the sampling settings (the parts of its
:mod:`~llm_etl_provider.contract.provenance` named :data:`CONTENT_KEYS`; the server's and the worker's
versions are not among them). The worker writes each result's ``meta.record_sha256`` (the record's digest,
:func:`record_digest`) and ``meta.content_sha256`` (:func:`content_digest`, over the record's digest and
:func:`content_key`).

Given an earlier run's output, the stage finds each input record whose digest one of its results has, and
stages those results with the record's shard (the *reused file*: :func:`encode_reused`); the worker publishes
an earlier result in place of a request only where its content digest is the one it computes now, so a change
of prompt, schema, model or sampling sends every record again. A reused result keeps the provenance of the run
that made it, and says ``meta.reused: true``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from llm_etl_provider.contract.provenance import digest_of

RECORD_SHA256 = "record_sha256"  # a result's meta: the record's digest
CONTENT_SHA256 = "content_sha256"  # a result's meta: the record's and its provenance's digest
REUSED = "reused"  # a result's meta (true where it was reused), and the summaries' count
CONTENT_KEYS = ("task", "model", "model_digest", "prompt_sha256", "schema_sha256", "sampling")


class ReusedFileError(ValueError):
    """The reused file is not what the stage writes."""


def record_digest(fields: Mapping[str, Any]) -> str:
    """The digest of a record as the reader parsed it (its fields, in any order)."""
    return str(digest_of(dict(fields)))


def content_key(provenance: Mapping[str, Any]) -> str:
    """The digest of the parts of a provenance that decide an answer: the same for every record of a shard,
    computed once."""
    return str(digest_of({key: provenance.get(key) for key in CONTENT_KEYS}))


def content_digest(record_sha256: str, key: str) -> str:
    """The digest of a record's content: its digest and its shard's :func:`content_key`."""
    return str(digest_of([record_sha256, key]))


def encode_reused(entries: Iterable[tuple[int, str]]) -> bytes:
    """The reused file of ``(input line, earlier result line as JSON)`` pairs."""
    lines = (json.dumps({"line": line, "result": json.loads(result)}) + "\n" for line, result in entries)
    return gzip.compress("".join(lines).encode(), compresslevel=6, mtime=0)


def decode_reused(data: bytes) -> dict[int, dict[str, Any]]:
    """The earlier results of a reused file by input line; raise :class:`ReusedFileError` if it is
    malformed."""
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ReusedFileError(f"not a gzip file: {exc}") from None
    reused: dict[int, dict[str, Any]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(raw)
            line, result = entry["line"], entry["result"]
        except (ValueError, KeyError, TypeError):
            raise ReusedFileError(f"line {number} is not an earlier result") from None
        if not isinstance(line, int) or not isinstance(result, dict):
            raise ReusedFileError(f"line {number} is not an earlier result")
        reused[line] = result
    return reused
