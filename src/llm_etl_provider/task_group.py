"""The operators in one reusable task group: stage → (enrich → extract) per shard → publish → cleanup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator, TaskGroup, task, task_group
from airflow.task.trigger_rule import TriggerRule

from llm_etl_provider.backends import (
    DEFAULT_EXECUTION_MODE,
    DEFAULT_KUBERNETES_CONN_ID,
    DEFAULT_NAMESPACE,
    KUBERNETES_MODE,
    LOCAL_MODE,
    checked_execution_mode,
)
from llm_etl_provider.contract.answers import ANSWER_SETTINGS
from llm_etl_provider.contract.invocation import DEFAULT_MAX_RECORD_BYTES, WORKER_SETTINGS, default_of
from llm_etl_provider.contract.layout import (
    DEFAULT_CACHE_ACCESS_MODES,
    DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS,
    DEFAULT_MODEL_SOURCE,
    DEFAULT_POD_TIME_LIMIT_SECONDS,
    DEFAULT_RUN_DEADLINE_SECONDS,
    DEFAULT_WORKER_MEMORY,
)
from llm_etl_provider.contract.object_transport import DEFAULT_TRANSPORT
from llm_etl_provider.operators.cleanup import CleanupOperator
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.operators.model_cache import ModelCacheOperator
from llm_etl_provider.operators.publish import PublishRunOperator
from llm_etl_provider.operators.stage import StageInputOperator
from llm_etl_provider.pod.builder import DOWNLOADED_SOURCES
from llm_etl_provider.staging.cutting import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_INPUT_RECORDS,
    DEFAULT_MAX_SHARDS,
    DEFAULT_MAX_STAGED_BYTES,
)
from llm_etl_provider.transport.extract import JSONL_OUTPUT
from llm_etl_provider.transport.quality import DEFAULT_QUALITY_MEASURE

# How the group's steps retry a failed try (a preempted GPU node, a lost pod, an API or store hiccup): the
# enrichment's default, and the model cache's, the extractions' and the publishing's
RETRIES = 2
RETRY_DELAY = timedelta(seconds=30)

# The enrichment's settings that its results depend on: part of the stage's plan
PLAN_SETTINGS = frozenset(
    {*WORKER_SETTINGS, "backend", "model_source", "model_path", "model_sha256", "model_image", "model_claim"}
)


def llm_enrichment_task_group(
    *,
    input_path: str,
    output_path: str,
    model: str,
    group_id: str = "llm_enrichment",
    namespace: str = DEFAULT_NAMESPACE,
    kubernetes_conn_id: str = DEFAULT_KUBERNETES_CONN_ID,
    execution_mode: str = DEFAULT_EXECUTION_MODE,
    local_dir: str | None = None,
    input_format: str = default_of("input_format"),
    output_format: str = JSONL_OUTPUT,
    partition_by: str | None = None,
    previous_output: str | None = None,
    golden_path: str | None = None,
    min_quality: float | str | None = None,
    quality_measure: str = DEFAULT_QUALITY_MEASURE,
    max_shard_bytes: int | str | None = None,
    max_record_bytes: int | str = DEFAULT_MAX_RECORD_BYTES,
    max_input_bytes: int | str = DEFAULT_MAX_INPUT_BYTES,
    max_input_records: int | str = DEFAULT_MAX_INPUT_RECORDS,
    max_shards: int | str = DEFAULT_MAX_SHARDS,
    max_staged_bytes: int | str = DEFAULT_MAX_STAGED_BYTES,
    results_asset: Asset | None = None,
    work_claim_size: str | None = None,
    work_storage_class: str | None = None,
    transport: str = DEFAULT_TRANSPORT,
    pods: int | str | None = None,
    store_cidrs: Sequence[str] | None = None,
    run_deadline_seconds: int = DEFAULT_RUN_DEADLINE_SECONDS,
    pod_time_limit_seconds: int = DEFAULT_POD_TIME_LIMIT_SECONDS,
    startup_timeout_seconds: int = DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS,
    worker_memory: str = DEFAULT_WORKER_MEMORY,
    model_cache_access_modes: Sequence[str] = DEFAULT_CACHE_ACCESS_MODES,
    model_cache_storage_class: str | None = None,
    **enrichment: Any,
) -> TaskGroup:
    """Add the enrichment pipeline to the DAG being defined and return its task group.

    Each shard is a mapped group of its own, ``shard`` (``enrich``, then ``extract``): a shard publishes
    as soon as its pod ends, and one shard's failure stops no other. A shard whose worker went over its
    dead-letter threshold is still extracted and published, marked failed. ``publish`` then writes the run's
    manifest over every shard and, when all succeeded, the run's ``_SUCCESS`` and one event of
    ``results_asset`` (default: an Asset named ``llm-etl/<dag_id>/<group_id>``), so other DAGs can be
    scheduled on whole results. A run publishes under ``<output_path>/<dag_id>/<group_id>/<run id>/``.
    The cleanup is the group's teardown: it runs after success, failure and a killed run alike, and never
    while a shard's enrichment runs.

    Clearing any task is safe: Airflow runs the stage (the setup) again with it, which keeps the plan's key
    and staging (:class:`StageInputOperator`); each enrichment waits for it, and the cleanup waits for every
    enrichment. ``run_deadline_seconds`` (default 7 days) is how long what a run left may live once Airflow
    no longer knows the run; ``pod_time_limit_seconds`` (``activeDeadlineSeconds``, default 3 days) and
    ``startup_timeout_seconds`` (the pod's start, the model load included, default 30 minutes) go to each
    shard's pod (Kubernetes). ``worker_memory`` (default ``1Gi``) is the worker's
    memory limit, which the stage checks each shard against.

    In Kubernetes, a ``pull`` or ``object`` model source adds ``cache_model`` (:class:`ModelCacheOperator`,
    a second setup): one pod downloads the model into the plan's model claim (``model_cache_access_modes``,
    default ``ReadWriteOnce``; ``model_cache_storage_class``) before any shard starts, and the shards' pods,
    which see the prompts, mount it read-only with no egress.

    ``enrichment`` goes to the shard's enrichment: :class:`LLMEnrichmentOperator` (task, template, backend,
    model source, GPUs ...) in Kubernetes, :class:`LocalEnrichmentOperator` (task, template,
    ``llm_conn_id`` ...) for ``execution_mode="local"``.
    ``max_record_bytes`` goes to both the staging and the worker (one value: they read records alike);
    ``max_input_bytes``, ``max_input_records``, ``max_shards`` and ``max_staged_bytes`` are the stage's caps
    (:class:`StageInputOperator`). With
    ``work_claim_size`` each shard's checkpoint survives its pod, so a retry after a lost pod resumes.
    ``input_format``: ``auto`` (from the name), ``jsonl``, ``csv`` or ``parquet``;
    ``output_format``: ``jsonl`` or ``parquet`` (each shard's ``results.parquet`` and
    ``dead_letter.parquet``; the worker's ``carry_fields`` puts input columns beside the enrichment);
    ``partition_by``: a Parquet output's results as Hive partitions by that column (ExtractResultsOperator).
    ``previous_output``: an earlier run's output folder; its results of unchanged records are published
    again instead of asking the model (:class:`StageInputOperator`). ``golden_path``: a labelled golden
    set (its labels in the worker's ``label_field``) enriched with each run and published apart; its
    ``quality_measure`` below ``min_quality`` withholds the run's ``_SUCCESS`` (:class:`PublishRunOperator`).
    ``transport``: ``log`` (shards in Secrets, results through the pods' logs: no egress, for small runs) or
    ``object`` (``pods`` byte ranges of the input read from the store, results as part objects: the path for
    large runs; see :class:`StageInputOperator`).
    """
    common: dict[str, Any] = {
        "namespace": namespace,
        "execution_mode": checked_execution_mode(execution_mode),
        "local_dir": local_dir,
        "kubernetes_conn_id": kubernetes_conn_id,
    }
    # A preempted GPU node or a lost pod fails the try; the shard then runs again in a new pod. The
    # extraction is idempotent, so a retry after an API hiccup publishes the same files.
    enrichment.setdefault("retries", RETRIES)
    enrichment.setdefault("retry_delay", RETRY_DELAY)
    with TaskGroup(group_id) as group:
        common["scope"] = group.group_id  # the group's full id: two pipelines in one DAG never meet
        stage = StageInputOperator(
            task_id="stage",
            input_path=input_path,
            input_format=input_format,
            max_shard_bytes=max_shard_bytes,
            max_record_bytes=max_record_bytes,
            max_input_bytes=max_input_bytes,
            max_input_records=max_input_records,
            max_shards=max_shards,
            max_staged_bytes=max_staged_bytes,
            work_claim_size=work_claim_size,
            work_storage_class=work_storage_class,
            transport=transport,
            pods=pods,
            store_cidrs=store_cidrs,
            output_path=output_path,
            # the object transport's parts follow the worker's checkpoints; ids are the worker's id field's
            checkpoint_every=enrichment.get("checkpoint_every", default_of("checkpoint_every")),
            id_field=enrichment.get("id_field", default_of("id_field")),
            run_deadline_seconds=run_deadline_seconds,
            worker_memory=worker_memory,
            previous_output=previous_output,
            golden_path=golden_path,
            golden_label_field=enrichment.get("label_field"),
            # what the shards' results depend on beside the input: another value makes another plan
            plan_settings={"model": model, **{k: v for k, v in enrichment.items() if k in PLAN_SETTINGS}},
            **common,
        )

        # Airflow wants every task right after a setup to need its success; the extraction and the run's
        # publishing run after failures too, so they take the shards from this step instead of the stage.
        @task(task_id="shards")
        def planned_shards(shards: Any) -> Any:
            """The stage's shard descriptors, passed on."""
            return shards

        shards = planned_shards(stage.output)
        setups: list[Any] = [stage]
        model_source = enrichment.get("model_source", DEFAULT_MODEL_SOURCE)
        if execution_mode == KUBERNETES_MODE and model_source in DOWNLOADED_SOURCES:
            cache_model = ModelCacheOperator(
                task_id="cache_model",
                shards=stage.output,
                model=model,
                model_source=model_source,
                cache_access_modes=model_cache_access_modes,
                cache_storage_class=model_cache_storage_class,
                run_deadline_seconds=run_deadline_seconds,
                retries=RETRIES,
                retry_delay=RETRY_DELAY,
                namespace=namespace,
                kubernetes_conn_id=kubernetes_conn_id,
                scope=common["scope"],
                **{
                    key: enrichment[key]
                    for key in (
                        "backend", "model_path", "model_sha256", "model_url_secret", "model_size",
                        "server_image", "worker_image", "image_pull_policy",
                    )
                    if key in enrichment
                },
            )  # fmt: skip
            setups.append(cache_model)
        enrichments: list[BaseOperator] = []

        @task_group(group_id="shard")
        def enrich_then_extract(shard: Any) -> None:
            # each mode's operator, with the settings of its own mode
            by_mode: tuple[type[BaseOperator], dict[str, Any]] = (
                (LocalEnrichmentOperator, {"local_dir": local_dir})
                if execution_mode == LOCAL_MODE
                else (
                    LLMEnrichmentOperator,
                    {"worker_memory": worker_memory, "namespace": namespace,
                     "kubernetes_conn_id": kubernetes_conn_id,
                     "pod_time_limit_seconds": pod_time_limit_seconds,
                     "startup_timeout_seconds": startup_timeout_seconds},
                )
            )  # fmt: skip
            operator, mode_settings = by_mode
            enrich = operator(
                task_id="enrich",
                shard=shard,
                model=model,
                max_record_bytes=max_record_bytes,
                scope=common["scope"],
                **mode_settings,
                **enrichment,
            )
            # a cleared shard's setups run again with it: its enrichment waits for the staging (and the model)
            setups >> enrich
            enrichments.append(enrich)
            extract = ExtractResultsOperator(
                task_id="extract",
                shard=shard,
                output_path=output_path,
                output_format=output_format,
                partition_by=partition_by,
                task_settings={name: enrichment[name] for name in ANSWER_SETTINGS if name in enrichment},
                # a failed enrichment may have written its whole stream (over the dead-letter threshold):
                # publish it, marked failed; a stream cut short is refused with nothing published
                trigger_rule=TriggerRule.ALL_DONE,
                retries=RETRIES,
                retry_delay=RETRY_DELAY,
                **common,
            )
            enrich >> extract

        per_shard = enrich_then_extract.expand(shard=shards)
        gpus = enrichment.get("gpus")
        dag_id = group.dag.dag_id if group.dag is not None else ""
        publish = PublishRunOperator(
            task_id="publish",
            output_path=output_path,
            shards=shards,
            gpus_per_shard=gpus if isinstance(gpus, int) else None,
            min_quality=min_quality,
            quality_measure=quality_measure,
            trigger_rule=TriggerRule.ALL_DONE,
            # it reads and writes the store and the pods' status: a hiccup must not withhold _SUCCESS
            retries=RETRIES,
            retry_delay=RETRY_DELAY,
            outlets=[results_asset or Asset(name=f"llm-etl/{dag_id}/{group.group_id}")],
            **common,
        )
        cleanup = CleanupOperator(task_id="cleanup", output_path=output_path, **common)
        per_shard >> publish >> cleanup
        # the teardown never removes the staging under a shard that a clear set working again
        enrichments[0] >> cleanup
        cleanup.as_teardown(setups=setups)
    return group
