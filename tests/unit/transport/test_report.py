"""The run's report: one HTML page of charts beside the run's manifest, with no record content in it.

Each run here is published as a real one is: shard streams sealed by FrameWriter, extracted, then the run's
manifest (which writes the report); the page is read back with the standard library's HTML parser."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from upath import UPath

from llm_etl_provider.contract.layout import shard_folder
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.contract.summary import output_labels
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.frames import FrameWriter
from llm_etl_provider.transport.keys import new_key
from llm_etl_provider.transport.report import merge_summaries
from llm_etl_provider.transport.run_manifest import REPORT, publish_run_manifest
from llm_etl_provider.worker.tasks import task_for

KEY = new_key()
PLAN = "plan-a"
RUN = "manual__2026-12-07"
# in every record's text, id, free-text answer, dead letter and unknown input label: never in a report
MARKER = "PATIENT-7f3a9c-MARKER"
SENTIMENT = output_labels(task_for("sentiment").schema)[0]
CHARTED = ("labels", "dead-letters", "throughput", "latency", "tokens", "resources", "agreement")


class Page(HTMLParser):
    """The page's elements, text and sections, with every element checked to close in order."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "source", "wbr"})

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: Counter[str] = Counter()
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.headings: list[str] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.section: str | None = None
        self.feed(text)
        self.close()
        assert self.stack == [], f"unclosed: {self.stack}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes += attrs
        if tag == "section":
            self.section = str(dict(attrs)["id"])
            self.sections[self.section] = {"svg": 0, "text": []}
        if tag == "svg" and self.section:
            self.sections[self.section]["svg"] += 1
            assert float(dict(attrs)["width"] or 0) > 0
            assert float(dict(attrs)["height"] or 0) > 0
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes += attrs

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack.pop() == tag, f"</{tag}> closes another element"
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack and self.stack[-1] in ("h1", "h2", "h3"):
            self.headings.append(data)
        if self.section:
            self.sections[self.section]["text"].append(data)

    def words(self, section: str) -> str:
        return " ".join(self.sections[section]["text"])


def sealed(index: int, results: list[dict[str, Any]], dead: list[dict[str, Any]], summary: dict[str, Any]):
    lines: list[bytes] = []
    writer = FrameWriter(KEY, RUN, index, lines.append, chunk_bytes=300)
    for line in results:
        writer.add("result", json.dumps(line).encode())
    for line in dead:
        writer.add("dead_letter", json.dumps(line).encode())
    writer.finish({"model": "smollm2", "input_sha256": "a" * 64, **summary})
    return lines


def publish_shard(root: Any, index: int, results, dead, *, task="sentiment", labels=SENTIMENT, **summary):
    """Extract a shard's sealed stream, with a worker summary like the engine's, into ``root``."""
    n = len(results)
    started = 1_000_000.0 + index * 5
    elapsed = 10.0 + index
    worker = {
        "task": task,
        "records": n + len(dead),
        "results": n,
        "dead_letters": len(dead),
        "dead_letter_reasons": dict(Counter(line["reason"] for line in dead)),
        "started_at": started,
        "ended_at": started + elapsed,
        "elapsed_s": elapsed,
        "records_per_s": round((n + len(dead)) / elapsed, 3),
        "prompt_tokens": 100 * n,
        "completion_tokens": 10 * n,
        "cached_prompt_tokens": 60 * n,
        "latency_p50_s": 0.4,
        "latency_p95_s": 0.9,
        "progress_series": [[0.0, 0], [elapsed / 2, (n + len(dead)) // 2], [elapsed, n + len(dead)]],
        "output_labels": [list(entry) for entry in labels],
        **summary,
    }
    extract(sealed(index, results, dead, worker), KEY, root / shard_folder(index), plan=PLAN, source="test")


def result(k: int, enrichment: dict[str, Any], label: Any = ..., latency: float = 0.5) -> dict[str, Any]:
    meta: dict[str, Any] = {"model": "smollm2", "latency_s": latency, "prompt_tokens": 100, "attempts": 1}
    if label is not ...:
        meta["label"] = label
    return {"id": f"{MARKER}-{k}", "line": k + 1, "task": "t", "enrichment": enrichment, "meta": meta}


def dead_letter(k: int, reason: str) -> dict[str, Any]:
    return {
        "id": f"{MARKER}-d{k}",
        "line": 100 + k,
        "reason": reason,
        "detail": f"the answer {MARKER} does not match",
        "attempts": 3,
        "record": {"review": f"{MARKER} took 20 mg"},
        "raw": f'{{"review": "{MARKER}"}}',
    }


def planned(*records: int) -> list[ShardDescriptor]:
    return [ShardDescriptor(index, n, 0, "jsonl", plan=PLAN) for index, n in enumerate(records)]


@pytest.fixture
def three_shards(tmp_path) -> tuple[dict[str, Any], str]:
    """A sentiment run of three planned shards compared with the input's ``rating_label``: shard 0
    succeeded, shard 1 went over its dead-letter threshold (failed), shard 2 published nothing (missing)."""
    publish_shard(
        tmp_path,
        0,
        [
            result(0, {"sentiment": "positive"}, "positive"),
            result(1, {"sentiment": "negative"}, "positive"),
            result(2, {"sentiment": "neutral"}, " Neutral"),  # case and spaces aside: agrees
            result(3, {"sentiment": "positive"}, f"{MARKER}-label"),  # not a label: (other)
            result(4, {"sentiment": "positive"}, None, latency=2.0),  # no label in the input
        ],
        [dead_letter(0, "invalid_output")],
        label_field="rating_label",
    )
    publish_shard(
        tmp_path,
        1,
        [result(5, {"sentiment": "negative"}, "negative")],
        [dead_letter(1, "timeout"), dead_letter(2, "timeout"), dead_letter(3, "missing_field")],
        label_field="rating_label",
        dead_letter_threshold_exceeded=True,
        max_dead_letter_ratio=0.1,
    )
    timings = {
        0: {"pods": 1, "pod_seconds": 60.0, "model_load_seconds": 12.5, "server_start_seconds": 3.0},
        1: {"pods": 2, "pod_seconds": 95.0, "model_load_seconds": 11.0, "server_start_seconds": 2.5},
    }
    run = publish_run_manifest(tmp_path, planned(6, 4, 5), run_id=RUN, gpus_per_shard=2, pod_timings=timings)
    return run, (tmp_path / REPORT).read_text(encoding="utf-8")


def test_a_run_of_several_shards_has_every_section_and_its_charts(three_shards, tmp_path):
    run, text = three_shards
    assert run["report"] == REPORT  # the manifest (and so the XCom) names it
    assert json.loads((tmp_path / "manifest.json").read_text())["report"] == REPORT
    page = Page(text)
    assert page.tags["svg"] == len(CHARTED)
    for section in CHARTED:
        assert page.sections[section]["svg"] == 1, section
    assert page.headings[:3] == ["Run report", "Run summary", "Labels"]
    assert "Agreement of sentiment with rating_label" in page.headings
    summary = page.words("summary")
    for shown in ("failed", "missing", "succeeded", RUN, "smollm2", "sentiment", PLAN, "15", "6", "4"):
        assert shown in summary, shown
    assert "over the worker's max_dead_letter_ratio 0.1" in summary  # the failed shard's reason
    assert "nothing was published" in summary  # the missing shard's


def test_the_charts_count_labels_reasons_and_agreement(three_shards):
    page = Page(three_shards[1])
    labels = page.words("labels")
    assert "6 labels counted" in labels
    dead = page.words("dead-letters")
    assert "timeout" in dead
    assert "invalid_output" in dead
    assert "missing_field" in dead
    assert "50.0%" in dead  # 2 of the run's 4 dead letters timed out
    agreement = page.words("agreement")
    assert "3 of 5 results agree (60.0%)" in agreement
    assert "1 results' inputs had no rating_label" in agreement
    assert "(other)" in agreement
    latency = page.words("latency")
    assert "p50" in latency
    assert "p99" in latency
    assert "Over 6 results" in latency
    resources = page.words("resources")
    assert "GPU-seconds" in resources
    assert "310" in resources  # (60 + 95) pod seconds x 2 GPUs
    tokens = page.words("tokens")
    assert "600" in tokens  # 100 prompt tokens for each of the 6 results


def test_no_record_content_reaches_the_report(three_shards, tmp_path):
    """The marker is in every record's id, text, dead letter and in an input label the schema lacks."""
    assert MARKER in (tmp_path / shard_folder(0) / "results.jsonl").read_text()
    assert MARKER in (tmp_path / shard_folder(0) / "dead_letter.jsonl").read_text()
    assert MARKER not in three_shards[1]


def test_the_page_is_self_contained_with_no_script_and_no_external_reference(three_shards):
    text = three_shards[1]
    page = Page(text)
    assert page.tags["script"] == 0
    assert page.tags["link"] == 0
    assert page.tags["img"] == 0
    assert not [(name, value) for name, value in page.attributes if name in ("href", "src", "xlink:href")]
    assert not [name for name, _ in page.attributes if name.startswith("on") or name == "style"]
    assert "http://" not in text
    assert "https://" not in text
    assert "url(" not in text
    assert "default-src 'none'" in text  # its own Content-Security-Policy forbids scripts and fetches


def test_a_tags_run_without_a_label_column(tmp_path):
    tags = output_labels(task_for("tags", categories=("pain", "sleep", "cost")).schema)[0]
    publish_shard(
        tmp_path,
        0,
        [
            result(0, {"tags": ["pain", "sleep"]}),
            result(1, {"tags": ["pain"]}),
            result(2, {"tags": []}),
        ],
        [],
        task="tags",
        labels=tags,
    )
    run = publish_run_manifest(tmp_path, planned(3), run_id=RUN)
    assert run["state"] == "succeeded"
    page = Page((tmp_path / REPORT).read_text())
    labels = page.words("labels")
    assert "pain" in labels
    assert "cost" in labels  # every label the schema has, counted or not
    assert "3 labels counted" in labels
    assert "The input's labels were not given" in page.words("agreement")
    assert page.sections["agreement"]["svg"] == 0
    assert "0 dead letters." in page.words("dead-letters")
    # local execution: no pods, so the workers' seconds instead of GPU-seconds
    assert "no pod ran (local execution)" in page.words("resources")
    assert page.sections["resources"]["svg"] == 1


def test_a_tags_run_agrees_where_the_input_s_label_is_among_the_tags(tmp_path):
    tags = output_labels(task_for("tags", categories=("pain", "sleep")).schema)[0]
    publish_shard(
        tmp_path,
        0,
        [result(0, {"tags": ["pain", "sleep"]}, "sleep"), result(1, {"tags": ["pain"]}, "sleep")],
        [],
        task="tags",
        labels=tags,
        label_field="topic",
    )
    publish_run_manifest(tmp_path, planned(2), run_id=RUN)
    agreement = Page((tmp_path / REPORT).read_text()).words("agreement")
    assert "1 of 2 results agree (50.0%)" in agreement
    assert "among tags" in agreement


HOSTILE = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "a & b </svg></section>"]


def test_hostile_label_names_are_escaped_everywhere(tmp_path):
    """A custom schema's enum, the label field's name and the model's name go into text, titles and
    attributes: each is text on the page, never markup."""
    schema = {"type": "object", "properties": {"verdict": {"enum": HOSTILE}}}
    labels = output_labels(schema)[0]
    publish_shard(
        tmp_path,
        0,
        [result(k, {"verdict": label}, label) for k, label in enumerate(HOSTILE)],
        [],
        task="custom",
        labels=labels,
        label_field='<b onmouseover="x">field</b>',
        model="<i>model</i>",
    )
    publish_run_manifest(tmp_path, planned(3), run_id=RUN)
    text = (tmp_path / REPORT).read_text()
    page = Page(text)
    assert not {"script", "img", "b", "i"} & set(page.tags)
    assert not [name for name, _ in page.attributes if name.startswith("on")]
    shown = " ".join(page.text)
    for label in HOSTILE:
        assert label in shown  # as text, escaped in the markup
    assert "3 of 3 results agree (100.0%)" in page.words("agreement")


def test_results_are_read_from_any_object_store(tmp_path):
    root = UPath(f"memory://report-{uuid.uuid4().hex}/run")
    publish_shard(root, 0, [result(0, {"sentiment": "neutral"}, "neutral")], [], label_field="rating_label")
    run = publish_run_manifest(root, planned(1), run_id=RUN)
    page = Page((root / run["report"]).read_text())
    assert "1 of 1 results agree (100.0%)" in page.words("agreement")


def test_a_result_line_that_is_not_json_is_counted_not_fatal(tmp_path):
    publish_shard(tmp_path, 0, [result(0, {"sentiment": "neutral"})], [])
    results = Path(tmp_path / shard_folder(0) / "results.jsonl")
    results.write_text(results.read_text() + "{not json\n")
    publish_run_manifest(tmp_path, planned(1), run_id=RUN)
    assert "1 result lines were not JSON objects" in Page((tmp_path / REPORT).read_text()).words("summary")


def test_shards_side_by_side_count_the_run_s_span_not_the_sum_of_their_times():
    """Three pods of 100 records, 10 s each, at once: 30 records/s, not the 10 that summed times gave."""
    shards = [
        {"records": 100, "elapsed_s": 10.0, "started_at": 1000.0 + n * 0.5, "ended_at": 1010.0 + n * 0.5}
        for n in range(3)
    ]
    total = merge_summaries(shards)
    assert total["elapsed_s"] == 11.0
    assert total["records_per_s"] == round(300 / 11.0, 3)
    assert total["worker_seconds"] == 30.0
    one_after_another = [{"records": 100, "elapsed_s": 10.0} for _ in range(3)]  # older summaries: no times
    assert merge_summaries(one_after_another)["records_per_s"] == 10.0
