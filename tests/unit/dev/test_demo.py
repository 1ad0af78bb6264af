from __future__ import annotations

from llm_etl_dev.demo import summary_lines
from llm_etl_provider.transport.run_manifest import publish_run_manifest
from tests.unit.transport.test_report import MARKER, RUN, planned, publish_shard, result


def test_the_demo_s_summary_reads_what_the_run_s_report_reads(tmp_path):
    results = [
        result(0, {"sentiment": "positive"}, "positive", latency=0.2),
        result(1, {"sentiment": "negative"}, "positive", latency=0.4),
    ]
    publish_shard(tmp_path, 0, results, [], label_field="rating_label")
    manifest = publish_run_manifest(tmp_path, planned(2), run_id=RUN)
    lines = summary_lines(manifest, tmp_path)
    assert lines[0] == f"run {RUN} succeeded: 2 records, 2 results, 0 dead letters, 1 shards"
    assert lines[2].startswith("latency: p50 0.")
    assert "p99 0.4" in lines[2] or "p99 0.39" in lines[2]  # 0.4 s within the histogram's 1%
    assert lines[3] == "agreement of sentiment with rating_label: 1 of 2 (50.0%)"
    assert MARKER not in "\n".join(lines)
