"""The worker summary's parts that the run's report reads: bounded, so that the summary always fits the
sealed trailer's one log line."""

from __future__ import annotations

import itertools
import json

import pytest

from llm_etl_provider.contract.codes import DeadLetterReason
from llm_etl_provider.contract.summary import (
    LABELS_BUDGET,
    MAX_SERIES_POINTS,
    LatencyHistogram,
    ProgressSeries,
    label_text,
    output_labels,
)
from llm_etl_provider.transport.frames import MAX_LINE_BYTES, FrameWriter
from llm_etl_provider.transport.keys import new_key
from llm_etl_provider.worker.stats import RunStats
from llm_etl_provider.worker.tasks import task_for


def test_percentiles_come_within_two_percent_under_a_second_too():
    histogram = LatencyHistogram()
    for k in range(1, 1001):
        histogram.add(k / 1000)  # 1 ms to 1 s, evenly
    for fraction in (0.5, 0.9, 0.95, 0.99):
        assert histogram.percentile(fraction) == pytest.approx(fraction, rel=0.02)
    assert LatencyHistogram().percentile(0.5) is None


def test_a_series_of_any_length_stays_bounded_and_spans_the_run_evenly():
    series = ProgressSeries()
    for second in range(100_000):  # a sample a second for 28 hours
        series.add(float(second), second * 3)
    points = series.to_summary(100_000.0, 300_000)
    assert len(points) <= MAX_SERIES_POINTS
    assert points[0] == [0.0, 0]
    assert points[-1] == [100_000.0, 300_000]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(points[:-1])]
    assert max(gaps) == min(gaps)  # even spacing until the final sample


def test_samples_closer_than_the_spacing_are_passed_over():
    series = ProgressSeries(spacing=1.0)
    for tenth in range(30):
        series.add(tenth / 10, tenth)
    assert series.to_summary(2.95, 30) == [[0.0, 0], [1.0, 10], [2.0, 20], [3.0, 30]]


def test_labels_are_the_schema_s_enums_and_booleans_in_its_order_never_free_text():
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "keywords": {"type": "array", "items": {"type": "string"}},
            "urgent": {"type": "boolean"},
            "severity": {"enum": ["low", "high", 3, None]},
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "role": {"enum": ["patient", "carer"]}},
                },
            },
        },
    }
    assert output_labels(schema) == (
        [
            ["urgent", "one", ["true", "false"]],
            ["severity", "one", ["low", "high", "3", "null"]],
            ["people.role", "many", ["patient", "carer"]],
        ],
        True,
    )
    assert output_labels(task_for("tags", categories=("pain", "sleep")).schema)[0] == [
        ["tags", "many", ["pain", "sleep"]]
    ]
    assert output_labels(task_for("moderation").schema)[0][0] == ["flagged", "one", ["true", "false"]]


def test_labels_past_the_budget_are_left_out_and_said_to_be():
    schema = {
        "type": "object",
        "properties": {
            "small": {"enum": ["a", "b"]},
            "huge": {"enum": [f"label-{k:04d}" for k in range(500)]},
            "after": {"type": "boolean"},
        },
    }
    labels, complete = output_labels(schema)
    assert labels == [["small", "one", ["a", "b"]]]
    assert complete is False


def test_label_text_spells_values_as_json_does():
    assert [label_text(v) for v in ("positive", True, False, None, 3, 2.5, [1])] == [
        "positive", "true", "false", "null", "3", "2.5", "[1]"
    ]  # fmt: skip


def test_the_largest_summary_fits_the_trailer_s_log_line():
    """Every reason, a full series of large numbers, labels up to the budget and a probed concurrency: the
    trailer (one frame, not split) stays under the log line's limit."""
    stats = RunStats(total=10**8)
    stats.results, stats.dead_letters = 10**8, 10**7
    stats.by_reason.update({reason.value: 10**6 for reason in DeadLetterReason})
    stats.prompt_tokens = stats.completion_tokens = stats.cached_tokens = 10**12
    for second in range(1, 300_000, 7):
        stats.series.add(second + 0.123456, second * 1000)
    labels = [[f"field_{k}", "one", [f"label-{k}-{j}" for j in range(10)]] for k in range(40)]
    while len(json.dumps(labels)) > LABELS_BUDGET:
        labels.pop()
    summary = {
        "task": "custom",
        "model": "m" * 200,
        "input_sha256": "a" * 64,
        "concurrency": 1024,
        "concurrency_source": "probe",
        "concurrency_levels": [8, 16, 32, 64, 128, 256, 512, 1024, 512],
        **stats.summary(),
        "output_labels": labels,
        "output_labels_complete": False,
        "label_field": "f" * 200,
        "max_dead_letter_ratio": 0.1,
        "dead_letter_threshold_exceeded": False,
        "attempt": 99,
    }
    lines: list[bytes] = []
    FrameWriter(new_key(), "r" * 200, 999, lines.append).finish(summary)
    (trailer,) = lines
    assert len(trailer) <= MAX_LINE_BYTES, len(trailer)
