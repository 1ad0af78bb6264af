"""The run's manifest: every shard the stage planned, with what its extraction published, in one file.

``<output>/manifest.json`` lists each shard (``succeeded``, ``failed`` with the reason, or ``missing`` when
nothing of its plan was published for it), their counts and file checksums, the model and task, the tokens and
worker seconds; ``<output>/_SUCCESS`` follows only when every shard succeeded. A shard's own output keeps its
own manifest; this one is written last, after every shard's extraction has ended, and just before it the
run's report, ``<output>/report.html`` (:mod:`~llm_etl_provider.transport.report`), which it names.

Publishing is bound to the stage's plan: a shard's output counts only if its manifest names the plan, the
shard's staged input digest and its planned record count. Shard folders of another plan (an earlier execution
of the run on other data or settings) and folders of shards the plan does not have are removed, never read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from os import PathLike
from typing import Any

from llm_etl_provider.contract.layout import GOLDEN_PREFIX, published_folder
from llm_etl_provider.contract.provenance import PROVENANCE, provenance_id
from llm_etl_provider.contract.reuse import REUSED
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.transport import report
from llm_etl_provider.transport.extract import FAILED, MANIFEST, SUCCEEDED, SUCCESS, as_upath, remove_tree
from llm_etl_provider.transport.quality import DEFAULT_QUALITY_MEASURE, QUALITY, gate_failure, measures

RUN_MANIFEST_FORMAT = "llm-etl-run-manifest/2"
MISSING = "missing"
REPORT = "report.html"
_SHARD_FOLDER = re.compile(rf"(shard-|{GOLDEN_PREFIX})[0-9]{{5,}}")


def unpublish_run(output: str | PathLike[str] | Any) -> None:
    """Remove the run's ``_SUCCESS``, manifest and report: what they vouched for is about to change."""
    root = as_upath(output)
    for name in (SUCCESS, MANIFEST, REPORT):
        if (root / name).exists():
            (root / name).unlink()


def stale_reason(shard: ShardDescriptor, manifest: dict[str, Any]) -> str | None:
    """Why a shard's published ``manifest`` is not this plan's output for ``shard``; None when it is."""
    read = manifest.get("worker_summary", {}).get("input_sha256")
    if shard.plan is not None and manifest.get("plan") != shard.plan:
        return f"published by plan {manifest.get('plan')}, not this run's plan {shard.plan}"
    if shard.input_sha256 is not None and read != shard.input_sha256:
        return f"computed over input {read}, not the staged shard's {shard.input_sha256}"
    if manifest.get("records") != shard.records:
        return f"holds {manifest.get('records')} records, the plan {shard.records}"
    return None


def _published(root: Any, shard: ShardDescriptor) -> tuple[dict[str, Any] | None, str | None]:
    """The shard's published manifest if it is this plan's; else None and, for a stale output (removed
    here), why it was stale."""
    folder = root / published_folder(shard.index, shard.golden)
    why: str | None
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        manifest, why = {}, f"its manifest is unreadable ({exc})"
    else:
        why = stale_reason(shard, manifest)
    if why is None:
        return manifest, None
    remove_tree(folder)
    return None, why


def _remove_unplanned(root: Any, planned: set[str]) -> list[str]:
    """Remove the shard folders the plan does not have (an earlier execution cut more shards)."""
    removed = []
    for child in root.iterdir() if root.exists() else ():
        if _SHARD_FOLDER.fullmatch(child.name) and child.name not in planned:
            remove_tree(child)
            removed.append(child.name)
    return sorted(removed)


def _shard_entry(
    index: int, expected_records: int, manifest: dict[str, Any] | None, stale: str | None = None
) -> dict[str, Any]:
    if manifest is None:
        failure = "nothing was published: its enrichment or extraction failed (see their tasks)"
        if stale:
            failure = f"nothing of this plan was published (an earlier output, {stale}, was removed)"
        return {"shard": index, "state": MISSING, "records": expected_records, "failure": failure}
    summary = manifest.get("worker_summary", {})
    entry: dict[str, Any] = {
        "shard": index,
        "state": manifest.get("state", SUCCEEDED),
        "records": manifest["records"],
        "results": manifest["results"],
        "dead_letters": manifest["dead_letters"],
        REUSED: manifest.get(REUSED, 0),
        "skipped_blank_lines": manifest.get("skipped_blank_lines", 0),
        "files": manifest["files"],
        "plaintext_chain_sha256": manifest["plaintext_chain_sha256"],
        "worker_seconds": summary.get("elapsed_s"),
        "prompt_tokens": summary.get("prompt_tokens"),
        "completion_tokens": summary.get("completion_tokens"),
        PROVENANCE: provenance_id(summary[PROVENANCE]) if summary.get(PROVENANCE) else None,
    }
    if "failure" in manifest:
        entry["failure"] = manifest["failure"]
    return entry


def publish_run_manifest(
    output: str | PathLike[str] | Any,
    shards: Sequence[ShardDescriptor],
    *,
    run_id: str,
    gpus_per_shard: int | None = None,
    pod_timings: dict[int, dict[str, Any]] | None = None,
    min_quality: float | None = None,
    quality_measure: str = DEFAULT_QUALITY_MEASURE,
) -> dict[str, Any]:
    """Write ``<output>/report.html`` and ``<output>/manifest.json`` for the stage's ``shards`` and, when
    every one succeeded with an output of their plan, ``<output>/_SUCCESS``; return the manifest. Stale shard
    folders (another plan's, or shards the plan does not have) are removed. ``pod_timings`` (by shard: its
    pods' wall time, model-load and server start-up time) go into the shards' entries, and GPU-seconds come
    from the pods' wall time when there were pods, else from the workers' time. The golden set's shards
    (``golden``) are measured, not counted among the results: below ``min_quality`` on ``quality_measure``
    the run fails (:mod:`~llm_etl_provider.transport.quality`)."""
    root = as_upath(output)
    root.mkdir(parents=True, exist_ok=True)
    unpublish_run(root)  # written again below, and _SUCCESS only if it still holds
    unplanned = _remove_unplanned(root, {published_folder(shard.index, shard.golden) for shard in shards})
    entries = []
    models, tasks = set(), set()
    provenance: dict[str, Any] = {}  # by id: what made the results, as many as the shards had
    for shard in sorted(shards, key=lambda s: s.index):
        manifest, stale = _published(root, shard)
        if manifest is not None:
            models.add(manifest.get("model"))
            tasks.add(manifest.get("task"))
            if made := manifest.get("worker_summary", {}).get(PROVENANCE):
                provenance[provenance_id(made)] = made
        entry = _shard_entry(shard.index, shard.records, manifest, stale)
        if shard.golden:
            entry["golden"] = True
        entries.append({**entry, **(pod_timings or {}).get(shard.index, {})})
    states = [entry["state"] for entry in entries]
    golden = [entry for entry in entries if entry.get("golden")]
    counted = [entry for entry in entries if not entry.get("golden")]  # the input's: the results
    worker_seconds = sum(entry.get("worker_seconds") or 0 for entry in entries)
    plans = sorted({shard.plan for shard in shards if shard.plan})
    run = {
        "format": RUN_MANIFEST_FORMAT,
        "run_id": run_id,
        "plan": plans[0] if len(plans) == 1 else plans or None,
        "removed_stale_folders": unplanned,
        "state": SUCCEEDED if all(state == SUCCEEDED for state in states) else FAILED,
        "shards": entries,
        "shard_states": {state: states.count(state) for state in sorted(set(states))},
        "records": sum(entry["records"] for entry in counted),
        "results": sum(entry.get("results", 0) for entry in counted),
        "dead_letters": sum(entry.get("dead_letters", 0) for entry in counted),
        REUSED: sum(entry.get(REUSED, 0) for entry in counted),
        "model": sorted(m for m in models if m) or None,
        "task": sorted(t for t in tasks if t) or None,
        # each result's meta.provenance names one of these
        PROVENANCE: provenance,
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
        run["gpus_per_shard"] = gpus_per_shard
        run["gpu_seconds"] = round(held * gpus_per_shard, 1)
    if golden:
        _gate(run, golden, root, min_quality, quality_measure)
    run["report"] = REPORT  # beside this manifest, written first: a reader of the manifest finds it
    (root / REPORT).write_text(report.render(run, root), encoding="utf-8")
    (root / MANIFEST).write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    if run["state"] == SUCCEEDED:
        (root / SUCCESS).write_text("")
    return run


def _gate(
    run: dict[str, Any], golden: list[dict[str, Any]], root: Any, threshold: float | None, measure: str
) -> None:
    """Measure the golden set into ``run`` and fail the run below the threshold."""
    agreement = report.golden_agreement(golden, root)
    measured: dict[str, Any] = measures(agreement) if agreement is not None else {"compared": 0}
    failure = (
        gate_failure(measured, measure, threshold)
        if agreement is not None
        else (
            "quality gate: the golden set cannot be measured: the task has no categorical answer, or no "
            "label_field names the golden records' labels"
        )
        if threshold is not None
        else None
    )
    run[QUALITY] = {**measured, "measure": measure, "min_quality": threshold, "passed": failure is None}
    if failure is not None:
        run["state"] = FAILED
        run["failure"] = failure
