"""The run's report: one self-contained HTML page beside the run's manifest (``report.html``).

It holds no record content: counts, the labels the task's output schema enumerates, dead-letter reasons,
timings and the run's own names (run, plan, task, model). Its charts are inline SVG, its style inline CSS; it
has no script and no external reference, and its own Content-Security-Policy forbids both, so it opens offline
and under a strict policy.

What it reads: the run's manifest (:func:`~llm_etl_provider.transport.run_manifest.publish_run_manifest`:
states, counts, the pods' timings), each published shard's manifest (its worker's summary: throughput over
time, tokens, dead letters by reason, the schema's labels; :mod:`~llm_etl_provider.contract.summary`) and,
line by line in constant memory, each published shard's results (labels, latency, agreement with the input's
own label where the worker was given ``label_field``). Dead letters are never read: they hold the records.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_etl_provider.contract.codes import DeadLetterReason
from llm_etl_provider.contract.layout import published_folder, shard_folder
from llm_etl_provider.contract.summary import (
    LABEL_FIELD,
    OUTPUT_LABELS,
    OUTPUT_LABELS_COMPLETE,
    PROGRESS_SERIES,
    RESULT_LABEL,
    LatencyHistogram,
    label_text,
)
from llm_etl_provider.transport.charts import NOTHING, bar_chart, escape, line_chart, number
from llm_etl_provider.transport.extract import MANIFEST, published_rows

PERCENTILES = (0.5, 0.9, 0.95, 0.99)
MAX_BARS = 40  # rows a bar chart draws; the rest are summed up under it
MAX_LINES = 12  # shards drawn one line each in the throughput chart; the run's total is always drawn
OTHER = "(other)"  # a reference label the schema does not have: never shown as written in the input
NONE = "(none)"  # a result without a value for the compared field
_REASONS = {reason.value for reason in DeadLetterReason}


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


@dataclass
class Agreement:
    """The model's main label against the input's own (``label_field``), per pair of labels.

    :param output_field: the output field compared: the schema's first top-level categorical field
    :param kind: ``one`` (pairs of reference and model label) or ``many`` (pairs of reference label and
        whether the model's list holds it)
    """

    output_field: str
    kind: str
    labels: list[str]
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    missing: int = 0  # results whose input had no label

    def canonical(self, reference: str) -> str:
        """The schema's label that ``reference`` spells (case and spaces aside), else :data:`OTHER`."""
        folded = reference.strip().casefold()
        return next((label for label in self.labels if label.casefold() == folded), OTHER)

    @property
    def compared(self) -> int:
        return sum(self.pairs.values())

    @property
    def agreed(self) -> int:
        if self.kind == "many":
            return sum(n for (_, among), n in self.pairs.items() if among == "yes")
        return sum(n for (reference, got), n in self.pairs.items() if reference == got)


@dataclass
class RunFacts:
    """What the report shows, gathered in one pass over the run's published files."""

    run: dict[str, Any]
    summaries: dict[int, dict[str, Any]]  # by shard, the published shards' worker summaries
    labels: list[list[Any]]
    labels_complete: bool
    label_field: str | None
    distributions: dict[str, Counter[str]]
    latency: LatencyHistogram
    agreement: Agreement | None
    unreadable_lines: int


def _summary(folder: Any, index: int, *, golden: bool = False) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / published_folder(index, golden) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    summary = manifest.get("worker_summary") if isinstance(manifest, dict) else None
    return summary if isinstance(summary, dict) else {}


def _values(enrichment: dict[str, Any], name: str) -> list[Any]:
    """The values of the labelled field ``name`` (``entities.type``: of each listed object) in a result."""
    outer, _, inner = name.partition(".")
    value = enrichment.get(outer)
    items = value if isinstance(value, list) else [] if value is None else [value]
    if inner:
        return [item.get(inner) for item in items if isinstance(item, dict)]
    return items


def _labelled(
    summaries: dict[int, dict[str, Any]],
) -> tuple[list[list[Any]], bool, str | None, Agreement | None]:
    """From the shards' worker summaries: the schema's labels, whether all fitted the summary, the input's
    label field, and an empty agreement of the model's main label with it (None without either)."""
    with_labels = [s for s in summaries.values() if isinstance(s.get(OUTPUT_LABELS), list)]
    labels: list[list[Any]] = [
        entry
        for entry in (with_labels[0][OUTPUT_LABELS] if with_labels else [])
        if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], list)
    ]
    complete = not any(s.get(OUTPUT_LABELS_COMPLETE) is False for s in with_labels)
    label_field = next((s[LABEL_FIELD] for s in summaries.values() if s.get(LABEL_FIELD)), None)
    main = next(
        ((str(n), str(k), [label_text(x) for x in names]) for n, k, names in labels if "." not in n), None
    )
    return labels, complete, label_field, Agreement(*main) if label_field and main else None


def collect(run: dict[str, Any], folder: Any) -> RunFacts:
    """Read what the report shows of the run published under ``folder`` (a UPath or ObjectStoragePath),
    whose manifest is ``run``: the shards' manifests, then their results, line by line (the golden set's
    shards are the quality gate's: :func:`golden_agreement`)."""
    published = [
        entry["shard"]
        for entry in run.get("shards", [])
        if entry.get("state") != "missing" and not entry.get("golden")
    ]
    summaries = {index: _summary(folder, index) for index in published}
    labels, complete, label_field, agreement = _labelled(summaries)
    sets = {str(name): {label_text(label) for label in names} for name, _, names in labels}
    distributions: dict[str, Counter[str]] = {name: Counter() for name in sets}
    latency = LatencyHistogram()
    unreadable = 0
    for index in published:
        for line in published_rows(folder / shard_folder(index)):
            if line is None:
                unreadable += 1
                continue
            enrichment = line.get("enrichment")
            enrichment = enrichment if isinstance(enrichment, dict) else {}
            meta = line.get("meta")
            meta = meta if isinstance(meta, dict) else {}
            if isinstance(seconds := meta.get("latency_s"), int | float) and not isinstance(seconds, bool):
                latency.add(float(seconds))
            for name, known in sets.items():
                for value in _values(enrichment, name):
                    if (label := label_text(value)) in known:
                        distributions[name][label] += 1
            if agreement is not None and RESULT_LABEL in meta:
                _compare(agreement, meta[RESULT_LABEL], enrichment)
    return RunFacts(
        run=run,
        summaries=summaries,
        labels=labels,
        labels_complete=complete,
        label_field=label_field,
        distributions=distributions,
        latency=latency,
        agreement=agreement,
        unreadable_lines=unreadable,
    )


def golden_agreement(entries: Sequence[dict[str, Any]], folder: Any) -> Agreement | None:
    """The model's main label against the golden set's own, over the golden shards' ``entries`` (the run
    manifest's) published under ``folder``: a golden record that went to the dead letters counts as
    answered wrong (no label). None where the task has no categorical field or the set no label field."""
    published = [e["shard"] for e in entries if e.get("state") != "missing"]
    summaries = {index: _summary(folder, index, golden=True) for index in published}
    _, _, label_field, agreement = _labelled(summaries)
    if agreement is None or label_field is None:
        return None
    for index in published:
        shard = folder / published_folder(index, golden=True)
        for line in published_rows(shard):
            meta = (line or {}).get("meta")
            if isinstance(meta, dict) and RESULT_LABEL in meta:
                enrichment = (line or {}).get("enrichment")
                _compare(agreement, meta[RESULT_LABEL], enrichment if isinstance(enrichment, dict) else {})
        for record in _dead_letter_records(shard):
            _compare(agreement, record.get(label_field), {})
    return agreement


def _dead_letter_records(shard: Any) -> Iterator[dict[str, Any]]:
    """The records of a shard's dead letters (whose record could be read): an object in JSON lines, its
    JSON text in Parquet."""
    for row in published_rows(shard, dead_letters=True):
        record = (row or {}).get("record")
        if isinstance(record, str):
            try:
                record = json.loads(record)
            except ValueError:
                continue
        if isinstance(record, dict):
            yield record


def _compare(agreement: Agreement, reference: Any, enrichment: dict[str, Any]) -> None:
    if reference is None:
        agreement.missing += 1
        return
    expected = agreement.canonical(label_text(reference))
    got = [label_text(value) for value in _values(enrichment, agreement.output_field)]
    if agreement.kind == "many":
        agreement.pairs[(expected, "yes" if expected in got else "no")] += 1
    else:
        agreement.pairs[(expected, got[0] if got and got[0] in agreement.labels else NONE)] += 1


def render(run: dict[str, Any], folder: Any) -> str:
    """The report of the run published under ``folder`` (see :func:`collect`), as one HTML page."""
    return page(collect(run, folder))


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.92rem}.failed,.missing{color:#b00020}.succeeded{color:#1b7a32}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}
svg.chart{display:block;margin:.6rem 0;max-width:100%;height:auto}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    def cell(tag: str, k: int, value: Any) -> str:
        shown = number(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        css = ' class="n"' if k in numeric else ""
        return f"<{tag}{css}>{escape('' if shown is None else shown)}</{tag}>"

    out = ["<table><thead><tr>", *(cell("th", k, h) for k, h in enumerate(head)), "</tr></thead><tbody>"]
    for row in rows:
        out += ["<tr>", *(cell("td", k, v) for k, v in enumerate(row)), "</tr>"]
    return "".join([*out, "</tbody></table>"])


def _list(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or NOTHING
    return NOTHING if value in (None, "") else str(value)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else NOTHING


def _section(anchor: str, title: str, body: list[str]) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>' + "".join(body) + "</section>"


def _p(text: str, css: str = "") -> str:
    attribute = f' class="{escape(css)}"' if css else ""
    return f"<p{attribute}>{escape(text)}</p>"


def _bars(title: str, counts: Sequence[tuple[str, int | float]], *, name: str, unit: str = "") -> list[str]:
    """A bar chart of ``counts`` (label, value), the first :data:`MAX_BARS` drawn and the rest summed."""
    shown, rest = list(counts[:MAX_BARS]), list(counts[MAX_BARS:])
    out = [
        bar_chart(title, [label for label, _ in shown], [(name, [value for _, value in shown])], unit=unit)
    ]
    if rest:
        out.append(_p(f"{len(rest)} more, {number(sum(v for _, v in rest))} in all, are not drawn.", "note"))
    return out


def _made_by(provenance: dict[str, Any]) -> str:
    """Each provenance of the run's results, in a line: its id, model digest, server version, sampling."""
    made = []
    for made_id, record in sorted(provenance.items()):
        server = record.get("server") or {}
        made.append(
            f"{made_id}: {record.get('model')} {record.get('model_digest') or '(digest unknown)'}, "
            f"{server.get('api')} server {server.get('version') or '(version unknown)'}, temperature "
            f"{(record.get('sampling') or {}).get('temperature')}, worker {record.get('worker_version')}"
        )
    return "; ".join(made) or "unknown"


def _summary_section(facts: RunFacts) -> str:
    run = facts.run
    totals = merge_summaries(list(facts.summaries.values()))
    facts_list = [
        ("state", run.get("state")),
        ("run", run.get("run_id")),
        ("task", _list(run.get("task"))),
        ("model", _list(run.get("model"))),
        ("made by", _made_by(run.get("provenance") or {})),
        ("plan", _list(run.get("plan"))),
        ("published", run.get("published_at")),
        ("records", number(run.get("records"))),
        ("results", number(run.get("results"))),
        ("reused", f"{number(run.get('reused') or 0)} results of unchanged records, from an earlier output"),
        ("dead letters", number(run.get("dead_letters"))),
        (
            "blank lines skipped",
            number(sum(s.get("skipped_blank_lines") or 0 for s in run.get("shards", []))),
        ),
        ("shards", ", ".join(f"{n} {state}" for state, n in (run.get("shard_states") or {}).items())),
        ("time", f"{number(totals['elapsed_s'])} s from the first shard's start to the last one's end"),
        ("throughput", f"{number(totals['records_per_s'])} records/s"),
        ("worker seconds", number(totals["worker_seconds"])),
    ]
    state = f' class="{escape(run.get("state"))}"'  # coloured by the page's style
    items = "".join(
        f"<dt>{escape(k)}</dt><dd{state if k == 'state' else ''}>{escape(v)}</dd>" for k, v in facts_list
    )
    rows = []
    for entry in run.get("shards", []):
        summary = facts.summaries.get(entry["shard"], {})
        rows.append(
            [
                entry["shard"],
                entry.get("state"),
                entry.get("records"),
                entry.get("results"),
                entry.get("dead_letters"),
                summary.get("elapsed_s"),
                summary.get("records_per_s"),
                summary.get("latency_p50_s"),
                summary.get("latency_p95_s"),
                entry.get("pods"),
                entry.get("failure", ""),
            ]
        )
    head = ["shard", "state", "records", "results", "dead letters", "worker s", "records/s", "p50 s", "p95 s",
            "pods", "failure"]  # fmt: skip
    body = [f"<dl>{items}</dl>", _table(head, rows, numeric=(0, 2, 3, 4, 5, 6, 7, 8, 9))]
    if facts.unreadable_lines:
        body.append(
            _p(f"{facts.unreadable_lines} result lines were not JSON objects and are not counted.", "note")
        )
    return _section("summary", "Run summary", body)


def _labels_section(facts: RunFacts) -> str:
    body: list[str] = []
    if not facts.labels:
        body.append(_p("The task's output schema enumerates no labels (free text is never counted here)."))
    for name, _, labels in facts.labels:
        counts = facts.distributions.get(str(name), Counter())
        ordered = (
            [(label_text(label), counts[label_text(label)]) for label in labels]
            if len(labels) <= MAX_BARS
            else counts.most_common()
        )
        total = sum(counts.values())
        body.append(f"<h3>{escape(name)}</h3>")
        body += _bars(f"Labels of {name}", ordered, name="results")
        body.append(_p(f"{number(total)} labels counted over the results.", "note"))
    if not facts.labels_complete:
        body.append(
            _p(
                "The schema has more labelled fields than a shard's summary carries; the rest are not shown.",
                "note",
            )
        )
    return _section("labels", "Labels", body)


def _dead_letters_section(facts: RunFacts) -> str:
    reasons: Counter[str] = Counter()
    for summary in facts.summaries.values():
        found = summary.get("dead_letter_reasons")
        for reason, n in found.items() if isinstance(found, dict) else ():
            reasons[reason if reason in _REASONS else "other"] += int(n or 0)
    total = int(facts.run.get("dead_letters") or 0)
    if not reasons:
        body = [
            _p(
                f"{number(total)} dead letters."
                + (" Their shards' summaries give no reasons." if total else "")
            )
        ]
        return _section("dead-letters", "Dead letters", body)
    ordered = reasons.most_common()
    body = _bars("Dead letters by reason", ordered, name="dead letters")
    meanings = {reason.value: reason.meaning for reason in DeadLetterReason}
    body.append(
        _table(
            ["reason", "dead letters", "share", "the record went to the dead letters because"],
            [[r, n, _share(n, total), meanings.get(r, "")] for r, n in ordered],
            numeric=(1, 2),
        )
    )
    return _section("dead-letters", "Dead letters", body)


def _segments(summary: dict[str, Any], start: float) -> list[tuple[float, float, float]]:
    """A shard's throughput as (from, to, records/s) over the run's time, from its progress series."""
    series = summary.get(PROGRESS_SERIES)
    began = summary.get("started_at")
    if not isinstance(series, list) or not isinstance(began, int | float):
        return []
    points = [
        (float(p[0]), float(p[1]))
        for p in series
        if isinstance(p, list) and len(p) == 2 and all(isinstance(v, int | float) for v in p)
    ]
    offset = float(began) - start
    return [
        (offset + t1, offset + t2, max(n2 - n1, 0) / (t2 - t1))
        for (t1, n1), (t2, n2) in itertools.pairwise(points)
        if t2 > t1
    ]


def _steps(segments: Sequence[tuple[float, float, float]]) -> list[tuple[float, float]]:
    return [point for a, b, rate in segments for point in ((a, rate), (b, rate))]


def _total(
    all_segments: Sequence[Sequence[tuple[float, float, float]]], bins: int = 80
) -> list[tuple[float, float]]:
    """The run's records/s over time: every shard's segments summed in ``bins`` equal spans."""
    end = max((b for segments in all_segments for _, b, _ in segments), default=0.0)
    if end <= 0:
        return []
    width = end / bins
    sums = [0.0] * bins
    for segments in all_segments:
        for a, b, rate in segments:
            for k in range(int(a // width), min(int(b // width) + 1, bins)):
                overlap = min(b, (k + 1) * width) - max(a, k * width)
                if overlap > 0:
                    sums[k] += rate * overlap / width
    return [point for k, rate in enumerate(sums) for point in ((k * width, rate), ((k + 1) * width, rate))]


def _throughput_section(facts: RunFacts) -> str:
    starts = [
        s["started_at"] for s in facts.summaries.values() if isinstance(s.get("started_at"), int | float)
    ]
    if not starts:
        return _section("throughput", "Throughput over time", [_p("No shard's summary says when it ran.")])
    start = min(starts)
    by_shard = {index: _segments(s, start) for index, s in sorted(facts.summaries.items())}
    drawn = {index: segments for index, segments in by_shard.items() if segments}
    if not drawn:
        body = [_p("The shards' summaries hold no progress series (written by workers before this report).")]
        return _section("throughput", "Throughput over time", body)
    # the run's total where there are several shards, each shard's line where they are few enough to read
    lines = [("run (all shards)", _total(list(drawn.values())))] if len(drawn) > 1 else []
    if len(drawn) <= MAX_LINES:
        lines += [(f"shard {index}", _steps(segments)) for index, segments in drawn.items()]
    body = [
        line_chart(
            "Records per second over time, per shard and for the run",
            lines,
            x_label="seconds since the first shard started",
            y_label="records/s",
        )
    ]
    if len(drawn) > MAX_LINES:
        body.append(
            _p(f"{len(drawn)} shards: the run's total only (one line each up to {MAX_LINES}).", "note")
        )
    return _section("throughput", "Throughput over time", body)


def _latency_section(facts: RunFacts) -> str:
    latency = facts.latency
    if not latency.count:
        return _section("latency", "Latency", [_p("No result carries a latency.")])
    values = [(f"p{round(q * 100)}", round(latency.percentile(q) or 0.0, 3)) for q in PERCENTILES]
    body = _bars("Latency percentiles of the results' requests (s)", values, name="seconds", unit=" s")
    body.append(
        _p(f"Over {number(latency.count)} results: each request's time to its valid answer (the last try), "
           "from a histogram with buckets 2% wide.", "note")
    )  # fmt: skip
    return _section("latency", "Latency", body)


def _tokens_section(facts: RunFacts) -> str:
    totals = merge_summaries(list(facts.summaries.values()))
    rows = [
        ["prompt tokens", totals["prompt_tokens"]],
        ["of them from the prompt cache", totals["cached_prompt_tokens"]],
        ["completion tokens", totals["completion_tokens"]],
        ["tokens/s (prompt and completion, over the run's time)", totals["tokens_per_s"]],
        ["retries", totals["retries"]],
    ]
    chart = bar_chart(
        "Tokens",
        ["prompt", "cached prompt", "completion"],
        [("tokens", [totals["prompt_tokens"], totals["cached_prompt_tokens"], totals["completion_tokens"]])],
    )
    return _section("tokens", "Tokens", [chart, _table(["", "count"], rows, numeric=(1,))])


def _resources_section(facts: RunFacts) -> str:
    run = facts.run
    entries = run.get("shards", [])
    timed = [
        e for e in entries if e.get("pod_seconds") is not None or e.get("model_load_seconds") is not None
    ]
    body: list[str] = []
    if not timed:
        body.append(_p("No pod timings: no pod ran (local execution), or none was left when the run was "
                       "published. The workers' seconds per shard instead.", "note"))  # fmt: skip
        worked = [(f"shard {e['shard']}", e.get("worker_seconds") or 0) for e in entries]
        body += _bars("Worker seconds per shard", worked, name="worker seconds", unit=" s")
        return _section("resources", "GPU-seconds and model load", body)
    gpus = run.get("gpus_per_shard")
    held = "GPU-seconds" if gpus else "pod seconds"
    shown = timed[:MAX_BARS]
    body.append(
        bar_chart(
            f"{held}, model-load and server start-up seconds per shard",
            [f"shard {e['shard']}" for e in shown],
            [
                (held, [(e.get("pod_seconds") or 0) * (gpus or 1) for e in shown]),
                ("model load s", [e.get("model_load_seconds") for e in shown]),
                ("server start s", [e.get("server_start_seconds") for e in shown]),
            ],
        )
    )
    if len(timed) > MAX_BARS:
        body.append(_p(f"The first {MAX_BARS} of {len(timed)} shards are drawn.", "note"))
    rows = [
        ["pod seconds (every try's pods)", run.get("pod_seconds")],
        ["GPU-seconds", run.get("gpu_seconds") if gpus else f"{NOTHING} (no GPUs requested)"],
        ["model-load seconds", run.get("model_load_seconds")],
    ]
    body.append(_table(["the run", ""], rows, numeric=(1,)))
    return _section("resources", "GPU-seconds and model load", body)


def _agreement_section(facts: RunFacts) -> str:
    agreement, label_field = facts.agreement, facts.label_field
    if label_field is None:
        text = (
            "The input's labels were not given: set label_field (the example DAG's Param \"Label column\") "
            "to an input field that holds a known label to see how often the model agrees with it."
        )
        return _section("agreement", "Agreement with the input's labels", [_p(text)])
    if agreement is None:
        text = f"The task's output has no top-level labelled field to compare with {label_field}."
        return _section("agreement", "Agreement with the input's labels", [_p(text)])
    title = f"Agreement of {agreement.output_field} with {label_field}"
    if not agreement.compared:
        text = f"No result carries a label of {label_field} to compare with {agreement.output_field}."
        return _section("agreement", title, [_p(text)])
    many = agreement.kind == "many"
    by_reference: Counter[str] = Counter()
    agreeing: Counter[str] = Counter()
    for (reference, got), n in agreement.pairs.items():
        by_reference[reference] += n
        if (got == "yes") if many else (reference == got):
            agreeing[reference] += n
    references = [r for r in (*agreement.labels, OTHER) if by_reference[r]]
    compared, agreed = agreement.compared, agreement.agreed
    how = ", agreeing where the model's list holds the input's label." if many else "."
    body = [
        _p(
            f"{number(agreed)} of {number(compared)} results agree ({_share(agreed, compared)}): "
            f"{label_field} (the input's label) against {agreement.output_field} (the model's){how}"
        )
    ]
    if agreement.missing:
        body.append(
            _p(f"{number(agreement.missing)} results' inputs had no {label_field}: not compared.", "note")
        )
    body += _bars(
        f"Agreement per input label of {label_field} (%)",
        [(r, round(100 * agreeing[r] / by_reference[r], 1)) for r in references],
        name="agree",
        unit="%",
    )
    if many:
        rows = [[r, by_reference[r], agreeing[r], _share(agreeing[r], by_reference[r])] for r in references]
        body.append(
            _table([label_field, "results", f"among {agreement.output_field}", "share"], rows, (1, 2))
        )
    else:
        columns = [*agreement.labels, *([NONE] if any(got == NONE for _, got in agreement.pairs) else [])]
        rows = [[r, *(agreement.pairs[(r, c)] for c in columns), by_reference[r]] for r in references]
        head = [f"{label_field} \\ {agreement.output_field}", *columns, "results"]
        body.append(_table(head, rows, numeric=tuple(range(1, len(columns) + 2))))
        body.append(
            _p(
                "Rows: the input's label; columns: the model's. Input labels the schema does not have are "
                f"counted as {OTHER}, never shown as written.",
                "note",
            )
        )
    return _section("agreement", title, body)


def _quality_section(facts: RunFacts) -> str:
    """The golden set's measures and the gate's verdict, where the run had a golden set."""
    quality = facts.run.get("quality")
    if not isinstance(quality, dict):
        return ""
    rows = [
        [name, quality.get(name)]
        for name in ("golden_records", "compared", "without_label", "accuracy", "macro_f1", "macro_recall")
        if name in quality
    ]
    threshold = quality.get("min_quality")
    verdict = (
        "No threshold: measured only."
        if threshold is None
        else f"The gate: {quality.get('measure')} at least {threshold}: "
        + ("passed." if quality.get("passed") else f"failed ({facts.run.get('failure', '')}).")
    )
    body = [
        _p(f"The model's {quality.get('field')} on the golden set, against its known labels.", "note"),
        _table(["measure", "value"], rows, numeric=[1]),
        _p(verdict, "" if quality.get("passed") else "failed"),
    ]
    return _section("quality", "Quality on the golden set", body)


def page(facts: RunFacts) -> str:
    """The report's HTML page."""
    run_id = str(facts.run.get("run_id", ""))
    sections = [
        _summary_section(facts),
        _labels_section(facts),
        _dead_letters_section(facts),
        _throughput_section(facts),
        _latency_section(facts),
        _tokens_section(facts),
        _resources_section(facts),
        _agreement_section(facts),
        _quality_section(facts),
    ]
    about = f"Run {run_id}: counts, the schema's labels, dead-letter reasons and timings; no record content."
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run report: {escape(run_id)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run report</h1>{_p(about, 'note')}" + "".join(sections) + "</body></html>\n"
    )
