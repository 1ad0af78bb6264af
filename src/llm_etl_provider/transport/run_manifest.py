"""The run's manifest: every shard the stage planned, with what its extraction published, in one file.

``<output>/manifest.json`` lists each shard (``succeeded``, ``failed`` with the reason, or ``missing`` when
nothing was published for it), their counts and file checksums, the model and task, the tokens and worker
seconds; ``<output>/_SUCCESS`` follows only when every shard succeeded. A shard's own output keeps its own
manifest; this one is written last, after every shard's extraction has ended.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from os import PathLike
from typing import Any

from llm_etl_provider.contract.layout import shard_folder
from llm_etl_provider.transport.extract import FAILED, MANIFEST, SUCCEEDED, SUCCESS, as_upath

RUN_MANIFEST_FORMAT = "llm-etl-run-manifest/1"
MISSING = "missing"


def _shard_entry(index: int, expected_records: int, manifest: dict[str, Any] | None) -> dict[str, Any]:
    if manifest is None:
        return {
            "shard": index,
            "state": MISSING,
            "records": expected_records,
            "failure": "nothing was published: its enrichment or extraction failed (see their tasks)",
        }
    summary = manifest.get("worker_summary", {})
    entry: dict[str, Any] = {
        "shard": index,
        "state": manifest.get("state", SUCCEEDED),
        "records": manifest["records"],
        "results": manifest["results"],
        "dead_letters": manifest["dead_letters"],
        "skipped_blank_lines": manifest.get("skipped_blank_lines", 0),
        "files": manifest["files"],
        "plaintext_chain_sha256": manifest["plaintext_chain_sha256"],
        "worker_seconds": summary.get("elapsed_s"),
        "prompt_tokens": summary.get("prompt_tokens"),
        "completion_tokens": summary.get("completion_tokens"),
    }
    if "failure" in manifest:
        entry["failure"] = manifest["failure"]
    return entry


def publish_run_manifest(
    output: str | PathLike[str] | Any,
    shards: list[tuple[int, int]],
    *,
    run_id: str,
    gpus_per_shard: int | None = None,
    pod_timings: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``<output>/manifest.json`` for the shards ``[(index, records the stage counted), ...]`` and,
    when every one succeeded, ``<output>/_SUCCESS``; return the manifest. ``pod_timings`` (by shard: its pods'
    wall time, model-load and server start-up time) go into the shards' entries, and GPU-seconds come from
    the pods' wall time when there were pods, else from the workers' time."""
    root = as_upath(output)
    root.mkdir(parents=True, exist_ok=True)
    success = root / SUCCESS
    if success.exists():
        success.unlink()  # written again below only if it still holds
    entries = []
    models, tasks = set(), set()
    for index, records in sorted(shards):
        path = root / shard_folder(index) / MANIFEST
        manifest = json.loads(path.read_text()) if path.exists() else None
        if manifest is not None:
            models.add(manifest.get("model"))
            tasks.add(manifest.get("task"))
        entries.append({**_shard_entry(index, records, manifest), **(pod_timings or {}).get(index, {})})
    states = [entry["state"] for entry in entries]
    worker_seconds = sum(entry.get("worker_seconds") or 0 for entry in entries)
    run = {
        "format": RUN_MANIFEST_FORMAT,
        "run_id": run_id,
        "state": SUCCEEDED if all(state == SUCCEEDED for state in states) else FAILED,
        "shards": entries,
        "shard_states": {state: states.count(state) for state in sorted(set(states))},
        "records": sum(entry["records"] for entry in entries),
        "results": sum(entry.get("results", 0) for entry in entries),
        "dead_letters": sum(entry.get("dead_letters", 0) for entry in entries),
        "model": sorted(m for m in models if m) or None,
        "task": sorted(t for t in tasks if t) or None,
        "prompt_tokens": sum(entry.get("prompt_tokens") or 0 for entry in entries),
        "completion_tokens": sum(entry.get("completion_tokens") or 0 for entry in entries),
        "worker_seconds": round(worker_seconds, 3),
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if pod_timings:
        run["pod_seconds"] = round(sum(entry.get("pod_seconds") or 0 for entry in entries), 1)
        run["model_load_seconds"] = round(sum(entry.get("model_load_seconds") or 0 for entry in entries), 1)
    if gpus_per_shard:
        held = run["pod_seconds"] if pod_timings else worker_seconds
        run["gpu_seconds"] = round(held * gpus_per_shard, 1)
    (root / MANIFEST).write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    if run["state"] == SUCCEEDED:
        success.write_text("")
    return run
