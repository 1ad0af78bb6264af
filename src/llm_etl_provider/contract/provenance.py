"""What made a result: the worker writes it, the manifests and the report read it.

A shard's *provenance* is everything that decides its answers beside the records: the task, the model's
name and digest (the GGUF file's sha256, or the model image's digest), the server and its version, the
prompts' and the schema's sha256, the sampling settings, and the worker's version. The worker puts it whole
in its summary (sealed in the trailer, then the shard's manifest and the run's), and its short id
(:func:`provenance_id`) in each result's ``meta.provenance``: a change of any part shows in every row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PROVENANCE = "provenance"  # the summary's and the manifests' key, and the result meta's (its id)
ID_LENGTH = 16  # hex digits of a provenance id


def digest_of(value: Any) -> str | None:
    """The sha256 of ``value`` as canonical JSON (sorted keys, no spaces), or None for None."""
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def model_digest(sha256: str | None = None, image: str | None = None) -> str | None:
    """The model's digest as its source knows it: ``sha256:<hex>`` of the GGUF file, else the digest an
    image reference pins (``registry/model@sha256:...``); None where neither is known."""
    if sha256:
        return f"sha256:{sha256}"
    if image and "@" in image:
        return image.rsplit("@", 1)[1]
    return None


def provenance_record(
    *,
    task: str,
    model: str,
    model_digest: str | None,
    api: str,
    server_version: str | None,
    prompts: Any,
    schema: Any,
    sampling: dict[str, Any],
    worker_version: str,
) -> dict[str, Any]:
    """A shard's provenance: ``prompts`` and ``schema`` go in as their sha256 only (never their text)."""
    return {
        "task": task,
        "model": model,
        "model_digest": model_digest,
        "server": {"api": api, "version": server_version},
        "prompt_sha256": digest_of(prompts),
        "schema_sha256": digest_of(schema),
        "sampling": dict(sampling),
        "worker_version": worker_version,
    }


def provenance_id(record: dict[str, Any]) -> str:
    """The short id of a provenance record: equal records, equal ids."""
    return str(digest_of(record))[:ID_LENGTH]
