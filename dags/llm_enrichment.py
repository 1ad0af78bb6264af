"""Enrich records with an LLM inside your cluster: stage → enrich (one GPU pod per shard) → extract → cleanup.

Trigger it from the UI: what a run chooses is a Param (input, output, task, prompt template, categories,
entity types, model, transport ...). What the deployment decides comes from the provider's section
``[llm_etl]`` of Airflow's configuration, read when the DAG is parsed: ``airflow.cfg`` or
``AIRFLOW__LLM_ETL__<OPTION>`` (``airflow config list --section llm_etl --include-descriptions`` lists every
option with its default): the execution mode, namespace and connections, where the cluster keeps its models
(``model_source`` and its fields), the images, GPUs and their pool, work claims, the schedule and the Params'
defaults. ``execution_mode = local`` runs the same operators without Kubernetes: the bundled SmolLM2 model
served by llama.cpp's server (or the server of the ``llm_conn_id`` connection) and the worker as local
processes (the README's demo runs it so).

A DAG of your own calls ``llm_enrichment_task_group`` with its arguments instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag

from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.config import LLMEtlConfig
from llm_etl_provider.contract.invocation import TASK_NAMES
from llm_etl_provider.contract.object_transport import DEFAULT_TRANSPORT, TRANSPORTS
from llm_etl_provider.llama_cpp import CPU_PARALLEL
from llm_etl_provider.params import worker_param
from llm_etl_provider.pod.builder import BACKENDS
from llm_etl_provider.staging.cutting import (
    DEFAULT_LOCAL_SHARD_BYTES,
    DEFAULT_MAX_SHARDS,
    DEFAULT_SHARD_BYTES,
    LOCAL_SHARD_LIMIT,
    SECRET_LIMIT,
    largest_record,
)
from llm_etl_provider.task_group import llm_enrichment_task_group
from llm_etl_provider.transport.extract import JSONL_OUTPUT, OUTPUT_FORMATS
from llm_etl_provider.transport.quality import DEFAULT_QUALITY_MEASURE, QUALITY_MEASURES

CONFIG = LLMEtlConfig.from_airflow()  # [llm_etl]
LOCAL = CONFIG.execution_mode == LOCAL_MODE


def default(value: Any) -> dict[str, Any]:
    """A Param's default, where the deployment gives one: a Param without one is required in the form."""
    return {} if value is None else {"default": value}


# The trigger form: every Param titled and described; the LLM server's choice only where it applies (local
# execution serves the bundled model with llama.cpp, or through a connection's server). The worker's settings
# take their defaults, choices and ranges from its flags' declaration (worker_param); the stage's sizes from
# its constants. The Params' names are what triggers pass in their conf (record_bytes, shard_bytes).
PARAMS: dict[str, Param] = {
    "input_path": Param(
        **default(CONFIG.default_input),
        type="string",
        title="Input",
        description="A JSONL or CSV file, plain or gzip, any URI",
    ),
    "output_path": Param(
        **default(CONFIG.default_output),
        type="string",
        title="Output folder",
        description="Any URI; each run publishes under <output>/<DAG id>/<task group>/<run id>/",
    ),
    "task": worker_param(
        "task",
        title="Task",
        description=f"One of {', '.join(TASK_NAMES)} (custom: a system prompt; a schema for JSON answers)",
    ),
    "template": worker_param(
        "template",
        title="Prompt template",
        description="The user prompt, with record fields in braces, e.g. Review: {review}. Empty: the whole "
        "record but its id, one 'name: value' line per field",
    ),
    "categories": worker_param(
        "categories",
        title="Categories (tags task)",
        description="The categories the tags task chooses from, one per line; required for that task",
    ),
    "entity_types": worker_param(
        "entity_types",
        title="Entity types (entities task)",
        description="The types of entity the entities task extracts, one per line",
    ),
    "model": (
        Param(
            CONFIG.default_model,
            type=["null", "string"],
            title="Model",
            description="The name to serve the model under. Empty: the connection's model, or the bundled "
            "model's",
        )
        if LOCAL
        else Param(
            **default(CONFIG.default_model),
            type="string",
            title="Model",
            description="The model the LLM server serves, e.g. llama3.2:3b for Ollama",
        )
    ),
    **(
        {
            "backend": Param(
                CONFIG.backend,
                enum=list(BACKENDS),
                title="LLM server",
                description="The server in each pod: ollama, llamacpp or vllm",
            )
        }
        if not LOCAL
        else {}
    ),
    "transport": Param(
        DEFAULT_TRANSPORT,
        enum=list(TRANSPORTS),
        title="Transport",
        description=(
            "log: shards in Kubernetes Secrets and results through the pods' logs, no egress (small runs); "
            "object: each pod reads its byte range of the input from the store and writes its results "
            "there (input and output on s3:// or gs://, uncompressed input; large runs)"
        ),
    ),
    "pods": Param(
        1,
        type="integer",
        minimum=1,
        maximum=DEFAULT_MAX_SHARDS,
        title="Pods (object transport)",
        description="How many pods, each with its GPUs and one model load, share the input; the log "
        "transport cuts Secret-sized shards instead",
    ),
    "shard_bytes": Param(
        DEFAULT_LOCAL_SHARD_BYTES if LOCAL else DEFAULT_SHARD_BYTES,
        type="integer",
        minimum=1,
        maximum=LOCAL_SHARD_LIMIT if LOCAL else SECRET_LIMIT,
        title="Shard size (log transport, compressed bytes)",
        description="The log transport cuts the input into shards of at most this size, one pod each "
        "(a Secret's 1 MiB at most); local execution's shards are files of up to 1 GiB, one worker process "
        "each",
    ),
    "max_dead_letter_ratio": worker_param(
        "max_dead_letter_ratio",
        title="Dead letters that fail a shard (share)",
        description="A shard with more dead letters than this fails; 1: never for bad records",
    ),
    "record_bytes": worker_param(
        "max_record_bytes",
        maximum=largest_record(SECRET_LIMIT),  # the stage's: half of the largest shard
        title="Largest record (bytes)",
        description="Larger records go to the dead letters; at most half the shard size",
    ),
    "parallel": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Server parallelism",
        description=(
            "Requests the LLM server serves at once (vLLM --max-num-seqs, llama.cpp --parallel, "
            "OLLAMA_NUM_PARALLEL). Empty: "
            + ", ".join(f"{backend.gpu_parallel} for {name}" for name, backend in BACKENDS.items())
            + f" on a GPU; {CPU_PARALLEL} on CPU"
        ),
    ),
    "concurrency": worker_param(
        "concurrency",
        title="Requests in flight",
        description="The worker's requests in flight. Empty: twice the server's parallelism",
    ),
    "system_prompt": worker_param(
        "system_prompt",
        format="multiline",
        title="System prompt (custom task)",
        description="The custom task's instructions to the model; empty for the other tasks",
    ),
    "schema": worker_param(
        "schema",
        type=["null", "object"],  # the worker takes it as text: the operator writes the object out
        title="Output JSON schema (custom task)",
        description="The JSON schema every answer of the custom task must match; empty: free-text answers",
    ),
    "label_field": worker_param(
        "label_field",
        title="Label column",
        description="An input field holding a known label (the example data's rating_label): the run's "
        "report shows how often the model agrees with it. Empty: none",
    ),
    "carry_fields": worker_param(
        "carry_fields",
        title="Input columns in the results",
        description="Input fields copied into each result beside its enrichment, one per line; * for every "
        "field. Empty: none (the results name their record by id and line)",
    ),
    "previous_output": Param(
        None,
        type=["null", "string"],
        title="Reuse the results of",
        description="An earlier run's output folder (<output>/<dag>/<group>/<run>): a record whose content "
        "(the record, prompts, schema, model, sampling) is unchanged gets its earlier result again, without "
        "a request. Empty: every record goes to the model",
    ),
    "golden_path": Param(
        None,
        type=["null", "string"],
        title="Golden set",
        description="A file of records with known labels in the Label column's field, enriched with the run "
        "and measured (accuracy, macro-F1), published apart. Empty: none",
    ),
    "min_quality": Param(
        None,
        type=["null", "number"],
        minimum=0,
        maximum=1,
        title="Least quality on the golden set",
        description="Below it on the chosen measure the run publishes no _SUCCESS and fails, saying the "
        "measure. Empty: measured, never gating",
    ),
    "quality_measure": Param(
        DEFAULT_QUALITY_MEASURE,
        enum=list(QUALITY_MEASURES),
        title="Quality measure",
        description="accuracy; macro_f1 for one label per record (sentiment); macro_recall for lists "
        "(tags, moderation)",
    ),
    "output_format": Param(
        JSONL_OUTPUT,
        enum=list(OUTPUT_FORMATS),
        title="Output format",
        description="jsonl, or parquet: each shard's results.parquet, the enrichment as typed columns "
        "beside the carried input columns, and dead_letter.parquet",
    ),
    "partition_by": Param(
        None,
        type=["null", "string"],
        title="Partition the Parquet results by",
        description="A carried input column (or task, or enrichment.<field>): each shard's results as "
        "results/<column>=<value>/part-0.parquet, a Hive-partitioned folder. Empty: one file a shard",
    ),
}


@dag(
    dag_id="llm_enrichment",
    schedule=CONFIG.schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=2,
    render_template_as_native_obj=True,
    tags=["llm-etl"],
    params=PARAMS,
)
def llm_enrichment() -> None:
    llm_enrichment_task_group(
        input_path="{{ params.input_path }}",
        output_path="{{ params.output_path }}",
        model="{{ params.model }}",
        task="{{ params.task }}",
        template="{{ params.template }}",
        categories="{{ params.categories }}",
        entity_types="{{ params.entity_types }}",
        system_prompt="{{ params.system_prompt }}",
        schema="{{ params.schema }}",
        concurrency="{{ params.concurrency }}",
        parallel="{{ params.parallel }}",
        max_shard_bytes="{{ params.shard_bytes }}",
        transport="{{ params.transport }}",
        pods="{{ params.pods }}",
        max_record_bytes="{{ params.record_bytes }}",
        max_dead_letter_ratio="{{ params.max_dead_letter_ratio }}",
        label_field="{{ params.label_field }}",
        carry_fields="{{ params.carry_fields }}",
        output_format="{{ params.output_format }}",
        partition_by="{{ params.partition_by }}",
        previous_output="{{ params.previous_output }}",
        golden_path="{{ params.golden_path }}",
        min_quality="{{ params.min_quality }}",
        quality_measure="{{ params.quality_measure }}",
        **({} if LOCAL else {"backend": "{{ params.backend }}"}),
        **CONFIG.task_group_arguments(),
    )


llm_enrichment()
