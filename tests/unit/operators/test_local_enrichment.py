"""LocalEnrichmentOperator: the same worker settings as the pod's operator, no Kubernetes."""

from __future__ import annotations

import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

from llm_etl_provider.exceptions import PodSpecError
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from tests.task_context import task_context

SHARD = {"index": 0, "path": "/nowhere/shard.jsonl", "line_offset": 0, "records": 3, "input_format": "jsonl"}


def test_it_is_no_pod_operator_and_takes_the_workers_settings_as_keywords():
    assert not issubclass(LocalEnrichmentOperator, KubernetesPodOperator)
    with DAG("llm_enrichment", schedule=None):
        mapped = LocalEnrichmentOperator.partial(
            task_id="enrich", model="m", task="tags", temperature=0.3, local_dir="/tmp/s"
        ).expand(shard=[SHARD])
        with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
            LocalEnrichmentOperator.partial(task_id="typo", model="m", temprature=0.3)
        with pytest.raises(TypeError, match="gpus"):  # a pod's setting has no meaning here
            LocalEnrichmentOperator(task_id="gpus", shard=SHARD, model="m", gpus=1)
    assert mapped.partial_kwargs["temperature"] == 0.3


def test_the_pods_operator_points_local_execution_to_its_own_operator():
    with DAG("llm_enrichment", schedule=None), pytest.raises(TypeError, match="LocalEnrichmentOperator"):
        LLMEnrichmentOperator(task_id="enrich", shard=SHARD, model="m", execution_mode="local")


def test_a_setting_that_does_not_parse_fails_before_any_process_starts(tmp_path):
    with DAG("llm_enrichment", schedule=None):
        op = LocalEnrichmentOperator(
            task_id="enrich", shard=SHARD, model="m", local_dir=str(tmp_path), concurrency="lots"
        )
    with pytest.raises(PodSpecError, match="concurrency 'lots' is not usable"):
        op.execute(task_context("r1"))
    assert list(tmp_path.iterdir()) == []
