from __future__ import annotations

import json

from llm_etl_provider.dev.report import build_report


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_counts_labels_agreement_and_dead_letters(tmp_path):
    results = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"id": "a", "enrichment": {"sentiment": "positive"}},
            {"id": "b", "enrichment": {"sentiment": "positive"}},
            {"id": "c", "enrichment": {"sentiment": "negative"}},
        ],
    )
    dead = write_jsonl(tmp_path / "d.jsonl", [{"id": "d", "reason": "invalid_output"}])
    summary = {"records": 4, "records_per_s": 2.5, "latency_p50_s": 0.3, "latency_p95_s": 0.9}
    report = build_report(
        results, dead, summary, reference={"a": "positive", "b": "negative", "c": "negative"}
    )
    assert "- results: 3" in report
    assert "- dead letters: 1 (invalid_output: 1)" in report
    assert "| positive | 2 | 66.7% |" in report
    assert "2 of 3 agree (66.7%)" in report
    assert "| negative | 1 | 1 |" in report  # reference negative: 1 negative, 1 positive by the model


def test_report_handles_lists_typed_entities_and_flags(tmp_path):
    results = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"id": 1, "enrichment": {"flagged": False, "categories": []}},
            {
                "id": 2,
                "enrichment": {"entities": [{"text": "x", "type": "drug"}, {"text": "y", "type": "drug"}]},
            },
            {"id": 3, "enrichment": {"tags": ["pain", "sleep"]}},
        ],
    )
    report = build_report(results, tmp_path / "missing.jsonl", {})
    assert "| false | 1 | 100.0% |" in report
    assert "## Distribution of `entities.type`" in report
    assert "| drug | 2 | 100.0% |" in report
    assert "| pain | 1 | 50.0% |" in report
    assert "- dead letters: 0" in report
