from __future__ import annotations

import json

from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.run_manifest import publish_run_manifest
from tests.unit.transport.test_extract import KEY, frame_log


def planned(*shards: tuple[int, int], plan: str | None = None) -> list[ShardDescriptor]:
    """The stage's descriptors of shards ``(index, records)``."""
    return [ShardDescriptor(index, records, 0, "jsonl", plan=plan) for index, records in shards]


def test_the_run_manifest_lists_every_planned_shard_and_success_needs_all_of_them(tmp_path):
    extract(frame_log(), KEY, tmp_path / "shard-00000", source="test")
    failed = frame_log(n_results=1, n_dead=1, dead_letter_threshold_exceeded=True, max_dead_letter_ratio=0)
    extract(failed, KEY, tmp_path / "shard-00001", source="test")
    # shard 2 was planned (the stage counted 5 records in it) but nothing was published for it

    run = publish_run_manifest(tmp_path, planned((0, 28), (1, 2), (2, 5)), run_id="run-7", gpus_per_shard=1)

    assert json.loads((tmp_path / "manifest.json").read_text()) == run
    assert not (tmp_path / "_SUCCESS").exists()
    assert run["state"] == "failed"
    assert [(s["shard"], s["state"]) for s in run["shards"]] == [
        (0, "succeeded"),
        (1, "failed"),
        (2, "missing"),
    ]
    assert run["shard_states"] == {"failed": 1, "missing": 1, "succeeded": 1}
    assert (run["records"], run["results"], run["dead_letters"]) == (35, 26, 4)
    assert run["shards"][0]["files"]["results.jsonl"]["lines"] == 25
    assert "gpu_seconds" in run


def test_every_shard_succeeded_gives_the_run_its_success(tmp_path):
    (tmp_path / "_SUCCESS").write_text("")  # an earlier publish's
    extract(frame_log(), KEY, tmp_path / "shard-00000", source="test")
    assert publish_run_manifest(tmp_path, planned((0, 28)), run_id="run-7")["state"] == "succeeded"
    assert (tmp_path / "_SUCCESS").exists()
    extract(frame_log(), KEY, tmp_path / "shard-00001", source="test")
    run = publish_run_manifest(tmp_path, planned((0, 28), (1, 28), (2, 1)), run_id="run-7")
    assert run["state"] == "failed"
    assert not (tmp_path / "_SUCCESS").exists()  # the old _SUCCESS does not outlive a failed publish


def test_pod_timings_go_into_the_shards_and_gpu_seconds_count_every_pod(tmp_path):
    extract(frame_log(), KEY, tmp_path / "shard-00000", source="test")
    timings = {0: {"pods": 2, "pod_seconds": 90.0, "model_load_seconds": 20.0, "server_start_seconds": 3.0}}
    run = publish_run_manifest(
        tmp_path, planned((0, 28)), run_id="run-7", gpus_per_shard=2, pod_timings=timings
    )
    (shard,) = run["shards"]
    assert (shard["pods"], shard["pod_seconds"], shard["model_load_seconds"]) == (2, 90.0, 20.0)
    assert (run["pod_seconds"], run["model_load_seconds"], run["gpu_seconds"]) == (90.0, 20.0, 180.0)


def test_only_this_plans_shards_count_and_stale_or_unplanned_folders_are_removed(tmp_path):
    """A run executed again on other data: the earlier execution's shards never count, and go."""
    extract(frame_log(), KEY, tmp_path / "shard-00000", plan="now", source="test")
    extract(frame_log(), KEY, tmp_path / "shard-00001", plan="before", source="test")  # another plan's
    extract(frame_log(), KEY, tmp_path / "shard-00007", plan="before", source="test")  # beyond this plan
    (tmp_path / "_transport").mkdir()  # not a shard's folder: left alone

    run = publish_run_manifest(tmp_path, planned((0, 28), (1, 28), plan="now"), run_id="run-7")

    assert [(s["shard"], s["state"]) for s in run["shards"]] == [(0, "succeeded"), (1, "missing")]
    assert "plan before" in run["shards"][1]["failure"]
    assert not (tmp_path / "shard-00001").exists()
    assert not (tmp_path / "shard-00007").exists()
    assert (tmp_path / "_transport").exists()
    assert run["removed_stale_folders"] == ["shard-00007"]
    assert (run["plan"], run["state"], run["results"]) == ("now", "failed", 25)
    assert not (tmp_path / "_SUCCESS").exists()


def test_a_shard_output_with_another_record_count_than_the_plan_is_stale(tmp_path):
    extract(frame_log(), KEY, tmp_path / "shard-00000", plan="p", source="test")
    run = publish_run_manifest(tmp_path, planned((0, 27), plan="p"), run_id="run-7")
    assert run["shards"][0]["state"] == "missing"
    assert "holds 28 records, the plan 27" in run["shards"][0]["failure"]


def test_the_shards_provenance_goes_into_their_manifests_and_the_run_s_by_id(tmp_path):
    from llm_etl_provider.contract.provenance import provenance_id

    made = {"task": "sentiment", "model": "smollm2", "model_digest": "sha256:" + "b" * 64, "sampling": {}}
    other = {**made, "model_digest": "sha256:" + "c" * 64}  # shard 1 ran with another model file
    assert extract(frame_log(provenance=made), KEY, tmp_path / "shard-00000")["provenance"] == made
    extract(frame_log(provenance=other), KEY, tmp_path / "shard-00001")
    run = publish_run_manifest(tmp_path, planned((0, 28), (1, 28)), run_id="run-7")
    assert run["provenance"] == {provenance_id(made): made, provenance_id(other): other}
    assert [s["provenance"] for s in run["shards"]] == [provenance_id(made), provenance_id(other)]
    assert "sha256:bbbb" in (tmp_path / "report.html").read_text()  # the report says what made the run


def golden_log(labels: list[tuple[str, str]], dead: tuple[str, ...] = ()) -> list[bytes]:
    """A golden shard's stream: results of (known label, model's label), dead letters of known labels."""
    from llm_etl_provider.transport.frames import FrameWriter

    lines: list[bytes] = []
    writer = FrameWriter(KEY, "run-7", 1, lines.append)
    for n, (known, got) in enumerate(labels):
        line = {"id": f"g{n}", "enrichment": {"sentiment": got}, "meta": {"label": known}}
        writer.add("result", json.dumps(line).encode())
    for n, known in enumerate(dead):
        letter = {"id": f"d{n}", "reason": "invalid_output", "record": {"id": f"d{n}", "label": known}}
        writer.add("dead_letter", json.dumps(letter).encode())
    writer.finish(
        {"task": "sentiment", "input_sha256": "a" * 64, "label_field": "label",
         "output_labels": [["sentiment", "one", ["positive", "negative", "neutral"]]]}
    )  # fmt: skip
    return lines


def test_a_golden_set_is_measured_apart_and_below_the_threshold_withholds_the_run_s_success(tmp_path):
    extract(frame_log(), KEY, tmp_path / "shard-00000")
    pairs = [("positive", "positive")] * 3 + [("negative", "positive")]
    extract(golden_log(pairs, dead=("negative",)), KEY, tmp_path / "golden-00001")
    shards = [ShardDescriptor(0, 28, 0, "jsonl"), ShardDescriptor(1, 5, 0, "jsonl", golden=True)]

    run = publish_run_manifest(tmp_path, shards, run_id="run-7", min_quality=0.5, quality_measure="accuracy")
    assert run["state"] == "succeeded"
    assert (run["records"], run["results"]) == (28, 25)  # the golden set is not among the results
    assert run["quality"]["accuracy"] == 0.6  # 3 of 5: the dead letter answered nothing
    assert run["quality"]["golden_records"] == 5
    assert run["quality"]["passed"] is True
    assert (tmp_path / "_SUCCESS").exists()
    assert "Quality on the golden set" in (tmp_path / "report.html").read_text()

    run = publish_run_manifest(tmp_path, shards, run_id="run-7", min_quality=0.7, quality_measure="macro_f1")
    assert run["state"] == "failed"
    assert run["failure"].startswith("quality gate: macro_f1 ")
    assert not (tmp_path / "_SUCCESS").exists()
    assert (tmp_path / "golden-00001" / "_SUCCESS").exists()  # its own shard stays published
