"""A short readable report of a run: counts, label distribution, agreement, throughput, latency."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llm_etl_provider.contract.summary import LatencyHistogram


def _lines(paths: Path | Sequence[Path]) -> Iterator[dict[str, Any]]:
    for path in [paths] if isinstance(paths, Path) else paths:
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add up the worker summaries of several shards (run one after another or side by side)."""
    total: dict[str, Any] = {}
    counts = ("records", "results", "dead_letters", "skipped_blank_lines")
    for key in (*counts, "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "retries"):
        total[key] = sum(int(s.get(key) or 0) for s in summaries)
    # Shards run side by side (pods) or one after another (local): the run's time is the span from the first
    # start to the last end, where the summaries say when; the sum of their times only for older summaries.
    worker_seconds = sum(float(s.get("elapsed_s") or 0) for s in summaries)
    spans = [(s.get("started_at"), s.get("ended_at")) for s in summaries]
    timed = [
        (float(a), float(b)) for a, b in spans if isinstance(a, int | float) and isinstance(b, int | float)
    ]
    if summaries and len(timed) == len(summaries):
        elapsed = max(b for _, b in timed) - min(a for a, _ in timed)
    else:
        elapsed = worker_seconds
    total["elapsed_s"] = round(elapsed, 3)
    total["worker_seconds"] = round(worker_seconds, 3)
    total["records_per_s"] = round(total["records"] / elapsed, 3) if elapsed else 0
    total["tokens_per_s"] = (
        round((total["prompt_tokens"] + total["completion_tokens"]) / elapsed, 1) if elapsed else 0
    )
    total["shards"] = len(summaries)
    return total


def label_sets(schema: dict[str, Any]) -> dict[str, frozenset[str]]:
    """The enrichment's categorical fields and their labels, from the task's output schema: enums and
    booleans, lists of them, and the enum properties of listed objects (``entities.type``). Anything else may
    be free text copied from a record, so the report never lists it."""
    sets: dict[str, frozenset[str]] = {}

    def labels(part: Any) -> frozenset[str] | None:
        if not isinstance(part, dict):
            return None
        if isinstance(part.get("enum"), list):
            return frozenset(_label(value) for value in part["enum"])
        if part.get("type") == "boolean":
            return frozenset(("true", "false"))
        return None

    for name, part in (schema.get("properties") or {}).items():
        if (found := labels(part)) is not None:
            sets[name] = found
        elif isinstance(part, dict) and isinstance(items := part.get("items"), dict):
            if (found := labels(items)) is not None:
                sets[name] = found
            for inner, inner_part in (items.get("properties") or {}).items():
                if (found := labels(inner_part)) is not None:
                    sets[f"{name}.{inner}"] = found
    return sets


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _labels(enrichment: dict[str, Any], sets: dict[str, frozenset[str]]) -> Iterator[tuple[str, str]]:
    """Yield (field, label) for each label of the schema's label sets the enrichment holds."""
    for name, value in enrichment.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                for inner, inner_value in item.items():
                    if (label := _label(inner_value)) in sets.get(f"{name}.{inner}", ()):
                        yield f"{name}.{inner}", label
            elif (label := _label(item)) in sets.get(name, ()):
                yield name, label


def build_report(
    results_path: Path | Sequence[Path],
    dead_letter_path: Path | Sequence[Path],
    summary: dict[str, Any],
    *,
    schema: dict[str, Any],
    reference: dict[Any, str] | None = None,
    reference_field: str = "sentiment",
) -> str:
    """Return a Markdown report of a run.

    :param results_path: the results JSONL (or one per shard)
    :param dead_letter_path: the dead-letter JSONL (or one per shard)
    :param summary: the worker's summary (see :func:`merge_summaries` for several shards)
    :param schema: the task's output schema: only its categorical labels are counted (:func:`label_sets`)
    :param reference: known labels by record id, to measure agreement with ``reference_field``
    :param reference_field: the enrichment field compared with the reference labels
    """
    sets = label_sets(schema)
    distributions: dict[str, Counter[str]] = {}
    agreement: Counter[tuple[str, str]] = Counter()
    results = 0
    latency = LatencyHistogram()
    for line in _lines(results_path):
        results += 1
        if isinstance(seconds := (line.get("meta") or {}).get("latency_s"), int | float):
            latency.add(seconds)
        enrichment = line.get("enrichment") or {}
        for name, label in _labels(enrichment, sets):
            distributions.setdefault(name, Counter())[label] += 1
        got = _label(enrichment.get(reference_field))
        if reference is not None and line.get("id") in reference and got in sets.get(reference_field, ()):
            agreement[(str(reference[line["id"]]), got)] += 1
    reasons = Counter(line.get("reason", "unknown") for line in _lines(dead_letter_path))

    out = ["# Enrichment report", ""]
    out += [
        f"- records: {summary.get('records', results + sum(reasons.values()))}",
        f"- results: {results}",
        f"- dead letters: {sum(reasons.values())}"
        + (f" ({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items()))})" if reasons else ""),
        f"- blank lines skipped: {summary.get('skipped_blank_lines', 0)}",
        "",
        "## Throughput",
        "",
        f"- {summary.get('records_per_s', 0)} records/s, {summary.get('tokens_per_s', 0)} tokens/s "
        f"over {summary.get('elapsed_s', 0)} s",
        f"- latency p50 {_seconds(latency.percentile(0.5), summary.get('latency_p50_s'))} s, "
        f"p95 {_seconds(latency.percentile(0.95), summary.get('latency_p95_s'))} s"
        + (f" over {summary['shards']} shards" if summary.get("shards", 1) > 1 else ""),
        f"- tokens: {summary.get('prompt_tokens', 0)} prompt "
        f"({summary.get('cached_prompt_tokens', 0)} from the prompt cache), "
        f"{summary.get('completion_tokens', 0)} completion; retries: {summary.get('retries', 0)}",
    ]
    for name, counts in distributions.items():
        out += ["", f"## Distribution of `{name}`", "", "| label | records | share |", "|---|---:|---:|"]
        total = sum(counts.values())
        out += [f"| {label} | {n} | {n / total:.1%} |" for label, n in counts.most_common()]
    if agreement:
        total = sum(agreement.values())
        agreed = sum(n for (expected, got), n in agreement.items() if expected == got)
        labels = sorted({k for pair in agreement for k in pair})
        out += [
            "",
            f"## Agreement of `{reference_field}` with the reference labels",
            "",
            f"{agreed} of {total} agree ({agreed / total:.1%}). Rows: reference; columns: model.",
            "",
            "| reference \\ model | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels),
        ]
        out += [
            f"| {ref} | " + " | ".join(str(agreement[(ref, got)]) for got in labels) + " |" for ref in labels
        ]
    return "\n".join(out) + "\n"


def _seconds(measured: float | None, reported: Any) -> Any:
    return round(measured, 3) if measured is not None else reported
