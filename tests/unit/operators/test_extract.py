from __future__ import annotations

import json

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException

from llm_etl_provider.contract.layout import (
    LABEL_PLAN,
    LABEL_RUN,
    LABEL_RUN_KEY,
    LABEL_SHARD,
    MANAGED_BY,
    label_value,
    run_key,
    run_output_folder,
    run_prefix,
    shard_folder,
)
from llm_etl_provider.exceptions import ExtractionError, FrameStreamRejectedError, ShardFailedError
from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.stage import StageInputOperator
from llm_etl_provider.transport.frames import FrameWriter
from llm_etl_provider.transport.keys import decode_key, load_key

RUN = "manual__2026-11-24T03:00:00+00:00"


def frames(key, op, n=20, shard=0, run_id=RUN, input_sha256=None, attempt=None, label="positive", **outcome):
    """The worker's log for ``op``'s staged shard: its trailer names the digest of the input it read and,
    given one, the try that wrote it."""
    lines = [b"2026-11-24T03:00:01.000000000Z start task=sentiment\n"]
    writer = FrameWriter(
        key, run_id, shard, lambda line: lines.append(b"2026-11-24T03:00:02.5Z " + line), chunk_bytes=300
    )
    for i in range(n):
        writer.add("result", json.dumps({"id": f"r{i}", "enrichment": {"sentiment": label}}).encode())
    writer.add("dead_letter", json.dumps({"id": "bad", "reason": "malformed_json"}).encode())
    summary = {
        "task": "sentiment",
        "model": "m",
        "records_per_s": 2.0,
        "input_sha256": input_sha256 or op.shard["input_sha256"],
        **({"attempt": attempt} if attempt is not None else {}),
        **outcome,
    }
    writer.finish(summary)
    return b"".join(lines)


def staged(tmp_path, api=None, mode="kubernetes"):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "text": "x"}) + "\n" for i in range(21)))
    with DAG("llm_enrichment", schedule=None):
        stage = StageInputOperator(
            task_id="stage",
            input_path=str(source),
            namespace="etl",
            execution_mode=mode,
            local_dir=str(tmp_path / "s"),
        )
        extract = ExtractResultsOperator(
            task_id="extract",
            output_path=str(tmp_path / "out"),
            shard={},
            namespace="etl",
            execution_mode=mode,
            local_dir=str(tmp_path / "s"),
        )
    shards = stage.execute({"run_id": RUN})
    extract.shard = shards[0]
    return shards[0]["key_secret"], extract


def pod_labels(op, shard=0, scope="llm_enrichment"):
    """The labels of a pod of ``op``'s shard's plan, as the enrichment gives them."""
    return {
        **MANAGED_BY,
        LABEL_RUN: label_value(RUN),
        LABEL_RUN_KEY: run_key(scope, RUN),
        LABEL_PLAN: op.shard["plan"],
        LABEL_SHARD: str(shard),
    }


def published(tmp_path, shard=0):
    """Where the extraction publishes the shard: under the DAG's and the run's folders."""
    return tmp_path / "out" / run_output_folder("llm_enrichment", RUN) / shard_folder(shard)


def test_extracts_the_pod_log_with_the_run_key_and_publishes(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), log=frames(key, op))
    api.add_pod("etl", "llm-etl-enrich-other-shard", pod_labels(op, 1), log=b"")
    summary = op.execute({"run_id": RUN})
    assert summary["records"] == 21
    assert summary["results"] == 20
    assert summary["dead_letters"] == 1
    assert summary["expected_records"] == 21
    shard = published(tmp_path)
    assert (shard / "_SUCCESS").exists()
    manifest = json.loads((shard / "manifest.json").read_text())
    assert manifest["extract"]["source"] == "pod etl/llm-etl-enrich-abc container base"


def test_a_tampered_log_fails_and_publishes_nothing(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    log = frames(key, op).splitlines(keepends=True)
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), log=b"".join(log[:3] + log[4:]))
    with pytest.raises(ExtractionError, match=r"shard 0: nothing was published: .*missing before frame"):
        op.execute({"run_id": RUN})
    assert not (published(tmp_path) / "_SUCCESS").exists()


def test_frames_of_another_run_are_refused(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), log=frames(key, op, run_id="scheduled__other"))
    with pytest.raises(ExtractionError, match="belongs to run 'scheduled__other'"):
        op.execute({"run_id": RUN})


def test_no_ended_pod_is_a_clear_error(tmp_path, api):
    _, op = staged(tmp_path, api)
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), phase="Running")
    with pytest.raises(ExtractionError, match="expected an ended pod, found llm-etl-enrich-abc=Running"):
        op.execute({"run_id": RUN})


def test_a_failed_pod_without_a_whole_stream_publishes_nothing(tmp_path, api):
    _, op = staged(tmp_path, api)
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), phase="Failed", log=b"crashed\n")
    with pytest.raises(ExtractionError, match="shard 0: nothing was published"):
        op.execute({"run_id": RUN})
    assert not list((tmp_path / "out").rglob("*.jsonl"))


def test_a_failed_tries_pod_is_passed_over(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-try1", {**pod_labels(op), "try_number": "1"}, phase="Failed")
    api.add_pod(
        "etl", "llm-etl-enrich-try2", {**pod_labels(op), "try_number": "2"}, log=frames(key, op, attempt=2)
    )
    assert op.execute({"run_id": RUN})["results"] == 20


def test_a_stream_sealed_by_another_try_than_its_pod_s_publishes_nothing(tmp_path, api):
    """Try 2's pod replaying try 1's whole stream (same run, shard, key, input) is not try 2's stream."""
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod(
        "etl", "llm-etl-enrich-try2", {**pod_labels(op), "try_number": "2"}, log=frames(key, op, attempt=1)
    )
    with pytest.raises(
        FrameStreamRejectedError, match="sealed by try 1 of the enrichment, it was read from try 2"
    ):
        op.execute({"run_id": RUN})
    assert not list((tmp_path / "out").rglob("*.jsonl"))


@pytest.mark.parametrize("order", [(1, 2, 10), (10, 2, 1)], ids=["oldest-first", "newest-first"])
def test_of_several_succeeded_pods_the_latest_try_is_read(tmp_path, api, order):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    for try_number in order:  # only try 10's log is whole: reading another fails the extraction
        log = frames(key, op, attempt=try_number)
        log = log if try_number == 10 else log[:-200]
        labels = {**pod_labels(op), "try_number": str(try_number)}
        api.add_pod("etl", f"llm-etl-enrich-try{try_number}", labels, log=log)
    assert op.execute({"run_id": RUN})["results"] == 20
    manifest = json.loads((published(tmp_path) / "manifest.json").read_text())
    assert manifest["extract"]["source"] == "pod etl/llm-etl-enrich-try10 container base"
    assert manifest["attempt"] == 10


def test_a_missing_key_secret_is_a_clear_error(tmp_path, api):
    _, op = staged(tmp_path, api)
    op.key_secret = "gone"
    with pytest.raises(ExtractionError, match="cannot read the run's key Secret gone: HTTP 404"):
        op.execute({"run_id": RUN})


def test_local_mode_publishes_the_local_log(tmp_path):
    """The worker's log from the local backend (which try's: ``tests/unit/backends/test_local.py``)."""
    _, op = staged(tmp_path, mode="local")
    root = tmp_path / "s" / run_prefix("llm_enrichment", RUN) / op.shard["plan"]
    key = load_key(root / "key")
    (root / shard_folder(0) / "container-try-1.log").write_bytes(frames(key, op, attempt=1))
    assert op.execute({"run_id": RUN})["results"] == 20
    assert (published(tmp_path) / "results.jsonl").read_text().count("\n") == 20


def test_local_mode_refuses_a_log_sealed_by_another_try(tmp_path):
    _, op = staged(tmp_path, mode="local")
    root = tmp_path / "s" / run_prefix("llm_enrichment", RUN) / op.shard["plan"]
    (root / shard_folder(0) / "container-try-3.log").write_bytes(
        frames(load_key(root / "key"), op, attempt=2)
    )
    with pytest.raises(FrameStreamRejectedError, match=r"sealed by try 2 .* read from try 3"):
        op.execute({"run_id": RUN})


def test_template_fields_are_pinned():
    assert ExtractResultsOperator.template_fields == (
        "output_path",
        "shard",
        "key_secret",
        "namespace",
        "local_dir",
        "output_format",
        "partition_by",
        "task_settings",
    )


def test_a_stream_with_another_record_count_than_the_stage_staged_publishes_nothing(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), log=frames(key, op, n=19))  # 20 records, not 21
    with pytest.raises(FrameStreamRejectedError, match="accounts for 20 records, the stage staged 21"):
        op.execute({"run_id": RUN})
    assert not (published(tmp_path) / "_SUCCESS").exists()


def test_a_stream_computed_over_another_shard_s_input_publishes_nothing(tmp_path, api):
    """A pod that mounted another shard's Secret writes a complete, authentic stream of this run and shard."""
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), log=frames(key, op, input_sha256="0" * 64))
    with pytest.raises(FrameStreamRejectedError, match="computed over an input of sha256 0000"):
        op.execute({"run_id": RUN})
    assert not (published(tmp_path) / "_SUCCESS").exists()


def test_a_failed_pod_over_the_dead_letter_threshold_is_published_as_failed_without_a_retry(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    log = frames(key, op, dead_letter_threshold_exceeded=True, max_dead_letter_ratio=0.0)
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), phase="Failed", log=log)
    with pytest.raises(ShardFailedError, match="shard 0 failed: 1 of 21 records went to the dead letters"):
        op.execute({"run_id": RUN})
    shard = published(tmp_path)
    assert json.loads((shard / "manifest.json").read_text())["state"] == "failed"
    assert len((shard / "results.jsonl").read_text().splitlines()) == 20
    assert not (shard / "_SUCCESS").exists()


def test_a_pod_of_the_same_run_id_in_another_dag_is_not_read(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-theirs", pod_labels(op, scope="another_dag"), log=frames(key, op))
    with pytest.raises(ExtractionError, match="expected an ended pod, found none"):
        op.execute({"run_id": RUN})


def test_the_shard_manifest_names_its_plan_and_a_changed_output_withdraws_the_runs_success(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod(
        "etl", "llm-etl-enrich-try1", {**pod_labels(op), "try_number": "1"}, log=frames(key, op, attempt=1)
    )
    op.execute({"run_id": RUN})
    assert json.loads((published(tmp_path) / "manifest.json").read_text())["plan"] == op.shard["plan"]
    run_success = published(tmp_path).parent / "_SUCCESS"
    run_success.write_text("")  # the run's publishing vouched for this output

    op.execute({"run_id": RUN})  # the same stream again: the published output does not change
    assert run_success.exists()

    api.add_pod(
        "etl",
        "llm-etl-enrich-try2",
        {**pod_labels(op), "try_number": "2"},
        log=frames(key, op, attempt=2, label="negative"),
    )
    op.execute({"run_id": RUN})  # a cleared shard's new try: another output, which the run must publish again
    assert not run_success.exists()
    assert json.loads((published(tmp_path) / "manifest.json").read_text())["attempt"] == 2


def test_a_pod_of_another_plan_of_the_same_run_is_not_read(tmp_path, api):
    """The run executed again on other data: the earlier plan's pods are not this shard's."""
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-old", {**pod_labels(op), LABEL_PLAN: "0" * 12}, log=frames(key, op))
    with pytest.raises(ExtractionError, match="expected an ended pod, found none"):
        op.execute({"run_id": RUN})


def test_partitioned_results_by_the_tasks_schema_or_a_clear_failure_without_a_retry(tmp_path, api):
    key_secret, op = staged(tmp_path, api)
    key = decode_key(api.secret_bytes("etl", key_secret, "key"), "test")
    api.add_pod("etl", "llm-etl-enrich-abc", pod_labels(op), log=frames(key, op))
    op.output_format, op.partition_by = "jsonl", "enrichment.sentiment"
    with pytest.raises(AirflowFailException, match="needs output_format='parquet'"):
        op.execute({"run_id": RUN})
    op.output_format, op.partition_by = "parquet", "region"
    with pytest.raises(AirflowFailException, match="shard 0: nothing was published: partition_by 'region'"):
        op.execute({"run_id": RUN})
    assert not (published(tmp_path) / "manifest.json").exists()
    op.partition_by, op.task_settings = "enrichment.sentiment", {"task": "sentiment"}
    op.execute({"run_id": RUN})
    manifest = json.loads((published(tmp_path) / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["dead_letter.parquet", "results/sentiment=positive/part-0.parquet"]
    op.partition_by = "None"  # what an unset Param renders to: one file
    op.execute({"run_id": RUN})
    assert (published(tmp_path) / "results.parquet").exists()
    assert not (published(tmp_path) / "results").exists()
