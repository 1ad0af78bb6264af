from __future__ import annotations

import json

from llm_etl_dev.report import build_report, label_sets, merge_summaries
from llm_etl_provider.worker.tasks import task_for


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
        results,
        dead,
        summary,
        schema=task_for("sentiment").schema,
        reference={"a": "positive", "b": "negative", "c": "negative"},
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
    schema = {
        "type": "object",
        "properties": {
            **task_for("moderation").schema["properties"],
            **task_for("entities", entity_types=("drug",)).schema["properties"],
            **task_for("tags", categories=("pain", "sleep")).schema["properties"],
        },
    }
    report = build_report(results, tmp_path / "missing.jsonl", {}, schema=schema)
    assert "| false | 1 | 100.0% |" in report
    assert "## Distribution of `entities.type`" in report
    assert "| drug | 2 | 100.0% |" in report
    assert "| pain | 1 | 50.0% |" in report
    assert "- dead letters: 0" in report


def test_free_text_of_a_custom_task_never_reaches_the_report(tmp_path):
    """Only labels the schema enumerates are listed: free text (a summary, an entity's text, an open list of
    keywords) may be a patient's words."""
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "keywords": {"type": "array", "items": {"type": "string"}},
            "urgent": {"type": "boolean"},
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "role": {"enum": ["patient", "carer"]}},
                },
            },
        },
    }
    canary = "CANARY-PT-7f3a9c"
    results = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {
                "id": canary,
                "enrichment": {
                    "summary": f"{canary} has a headache",
                    "keywords": [canary],
                    "urgent": True,
                    "people": [{"name": canary, "role": "patient"}],
                },
            }
        ],
    )
    report = build_report(
        results, tmp_path / "d.jsonl", {}, schema=schema, reference={canary: "x"}, reference_field="summary"
    )
    assert canary not in report
    assert "| true | 1 | 100.0% |" in report
    assert "## Distribution of `people.role`" in report
    assert set(label_sets(schema)) == {"urgent", "people.role"}


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
