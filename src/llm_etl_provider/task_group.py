"""The four operators wired into one reusable task group: stage → enrich (per shard) → extract → cleanup."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, TaskGroup

from llm_etl_provider.contract.invocation import DEFAULT_MAX_RECORD_BYTES
from llm_etl_provider.operators.cleanup import CleanupOperator
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.stage import StageInputOperator
from llm_etl_provider.staging import DEFAULT_SHARD_BYTES


def llm_enrichment_task_group(
    *,
    input_path: str,
    output_path: str,
    model: str,
    group_id: str = "llm_enrichment",
    namespace: str = "default",
    kubernetes_conn_id: str = "kubernetes_default",
    execution_mode: str = "kubernetes",
    local_dir: str | None = None,
    input_format: str = "auto",
    max_shard_bytes: int | str = DEFAULT_SHARD_BYTES,
    max_record_bytes: int | str = DEFAULT_MAX_RECORD_BYTES,
    results_asset: Asset | None = None,
    work_claim_size: str | None = None,
    work_storage_class: str | None = None,
    **enrichment: Any,
) -> TaskGroup:
    """Add the enrichment pipeline to the DAG being defined and return its task group.

    ``enrichment`` goes to :class:`LLMEnrichmentOperator` (task, template, backend, model source, GPUs ...).
    ``max_record_bytes`` goes to both the staging and the worker (one value: they read records alike). With
    ``work_claim_size`` each shard's checkpoint survives its pod, so a retry after a lost pod resumes.
    The cleanup is the group's teardown: it runs after success, failure and a killed run alike. The
    extraction updates ``results_asset`` (default: an Asset named ``<group_id>_results``), so other DAGs
    can be scheduled on fresh results.
    """
    common: dict[str, Any] = {
        "namespace": namespace,
        "execution_mode": execution_mode,
        "local_dir": local_dir,
    }
    # A preempted GPU node or a lost pod fails the try; the shard then runs again in a new pod. The
    # extraction is idempotent, so a retry after an API hiccup publishes the same files.
    enrichment.setdefault("retries", 2)
    enrichment.setdefault("retry_delay", timedelta(seconds=30))
    with TaskGroup(group_id) as group:
        stage = StageInputOperator(
            task_id="stage",
            input_path=input_path,
            input_format=input_format,
            kubernetes_conn_id=kubernetes_conn_id,
            max_shard_bytes=max_shard_bytes,
            max_record_bytes=max_record_bytes,
            work_claim_size=work_claim_size,
            work_storage_class=work_storage_class,
            **common,
        )
        shards = stage.output
        enrich = LLMEnrichmentOperator.partial(
            task_id="enrich",
            model=model,
            max_record_bytes=max_record_bytes,
            kubernetes_conn_id=kubernetes_conn_id,
            **common,
            **enrichment,
        ).expand(shard=shards)
        extract = ExtractResultsOperator.partial(
            task_id="extract",
            output_path=output_path,
            retries=2,
            retry_delay=timedelta(seconds=30),
            outlets=[results_asset or Asset(name=f"{group_id}_results")],
            kubernetes_conn_id=kubernetes_conn_id,
            **common,
        ).expand(shard=shards)
        cleanup = CleanupOperator(task_id="cleanup", kubernetes_conn_id=kubernetes_conn_id, **common)
        enrich >> extract >> cleanup
        cleanup.as_teardown(setups=stage)
    return group
