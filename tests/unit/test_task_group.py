"""The task group wires its operators: what the stage is told of the enrichment, and how steps retry."""

from __future__ import annotations

from airflow.sdk import DAG

from llm_etl_provider.contract.invocation import default_of
from llm_etl_provider.contract.layout import (
    DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS,
    DEFAULT_POD_TIME_LIMIT_SECONDS,
)
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.task_group import RETRIES, RETRY_DELAY, llm_enrichment_task_group


def build(**enrichment):
    with DAG("pipeline", schedule=None) as dag:
        llm_enrichment_task_group(
            input_path="in.jsonl", output_path="out", model="m", execution_mode="local", **enrichment
        )
    return dag


def test_the_stage_reads_the_input_with_the_workers_id_field_and_checkpoints():
    stage = build(id_field="uid", checkpoint_every=7).get_task("llm_enrichment.stage")
    assert (stage.id_field, stage.checkpoint_every) == ("uid", 7)
    stage = build().get_task("llm_enrichment.stage")
    assert (stage.id_field, stage.checkpoint_every) == (
        default_of("id_field"),
        default_of("checkpoint_every"),
    )


def test_the_stages_caps_can_be_raised():
    caps = {
        "max_input_bytes": 1 << 40,
        "max_input_records": 10**9,
        "max_shards": 5000,
        "max_staged_bytes": 1 << 30,
    }
    stage = build(**caps).get_task("llm_enrichment.stage")
    assert {name: getattr(stage, name) for name in caps} == caps


def test_the_pods_time_limits_reach_each_shards_pod():
    with DAG("pipeline", schedule=None) as dag:
        llm_enrichment_task_group(
            input_path="in.jsonl", output_path="out", model="m", pod_time_limit_seconds=60,
            startup_timeout_seconds=30,
        )  # fmt: skip
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    assert isinstance(enrich, LLMEnrichmentOperator)
    assert (enrich.pod_time_limit_seconds, enrich.startup_timeout_seconds) == (60, 30)
    default = build_kubernetes().get_task("llm_enrichment.shard.enrich")
    assert isinstance(default, LLMEnrichmentOperator)
    assert (default.pod_time_limit_seconds, default.startup_timeout_seconds) == (
        DEFAULT_POD_TIME_LIMIT_SECONDS,
        DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS,
    )


def build_kubernetes():
    with DAG("pipeline", schedule=None) as dag:
        llm_enrichment_task_group(input_path="in.jsonl", output_path="out", model="m")
    return dag


def test_the_steps_that_retry_retry_alike_and_the_enrichments_can_be_set():
    dag = build()
    for step in ("shard.enrich", "shard.extract", "publish"):
        task = dag.get_task(f"llm_enrichment.{step}")
        assert (task.retries, task.retry_delay) == (RETRIES, RETRY_DELAY), step
    assert build(retries=5).get_task("llm_enrichment.shard.enrich").retries == 5
