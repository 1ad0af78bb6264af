"""Enrich records with an LLM inside your cluster: stage → enrich (one GPU pod per shard) → extract → cleanup.

Trigger it from the UI with Params, or let it run on ``$LLM_ETL_SCHEDULE`` (a cron expression; default none).
With ``LLM_ETL_EXECUTION_MODE=local`` the same operators run without Kubernetes: the bundled SmolLM2 model
served by llama.cpp's server and the worker as local processes (the README's demo runs it so).

Where the cluster keeps its models is the deployment's business, so it comes from the environment:
``LLM_ETL_MODEL_SOURCE`` (``pull``, ``pvc``, ``object``, ``image``), ``LLM_ETL_MODEL_URL_SECRET``,
``LLM_ETL_MODEL_SHA256``, ``LLM_ETL_MODEL_CLAIM``, ``LLM_ETL_MODEL_IMAGE``, ``LLM_ETL_MODEL_PATH``,
``LLM_ETL_MODEL_SIZE``, ``LLM_ETL_MODEL_CACHE_ACCESS_MODES`` (comma-separated, default ``ReadWriteOnce``) and
``LLM_ETL_MODEL_CACHE_STORAGE_CLASS`` (the claim that ``pull`` and ``object`` models are downloaded into, by a
pod that sees no prompt), ``LLM_ETL_WORKER_IMAGE``, ``LLM_ETL_SERVER_IMAGE`` and ``LLM_ETL_IMAGE_PULL_POLICY``
(``IfNotPresent`` for images loaded into the nodes), ``LLM_ETL_GPUS`` (default 1), ``LLM_ETL_DEFERRABLE``
(``true``: the pods are watched by the triggerer),
``LLM_ETL_WORK_CLAIM_SIZE`` (e.g. ``1Gi``: checkpoints on a volume that survives a lost pod),
``LLM_ETL_WORK_STORAGE_CLASS`` and ``LLM_ETL_CHECKPOINT_EVERY``; ``LLM_ETL_TRANSPORT`` and ``LLM_ETL_PODS``
set the defaults of the transport and the pod count, ``LLM_ETL_STORE_CIDRS`` (comma-separated) where the
object transport's pods may reach the store (default: its host's addresses when the run is staged).
In local mode, ``LLM_ETL_LLM_CONN_ID`` names an ``llm_etl`` connection whose server (e.g. the Ollama of
docker-compose.yaml) does the enrichment instead of the bundled model. ``LLM_ETL_DEFAULT_INPUT``,
``LLM_ETL_DEFAULT_OUTPUT`` and ``LLM_ETL_DEFAULT_MODEL`` set the Params' defaults.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag

from llm_etl_provider.backends import DEFAULT_EXECUTION_MODE, DEFAULT_LOCAL_DIR, EXAMPLE_NAMESPACE, LOCAL_MODE
from llm_etl_provider.contract.invocation import TASK_NAMES
from llm_etl_provider.contract.object_transport import DEFAULT_TRANSPORT, TRANSPORTS
from llm_etl_provider.llama_cpp import CPU_PARALLEL
from llm_etl_provider.params import worker_param
from llm_etl_provider.pod.builder import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL_SOURCE
from llm_etl_provider.staging.cutting import (
    DEFAULT_MAX_SHARDS,
    DEFAULT_SHARD_BYTES,
    SECRET_LIMIT,
    largest_record,
)
from llm_etl_provider.task_group import llm_enrichment_task_group

EXECUTION_MODE = os.environ.get("LLM_ETL_EXECUTION_MODE", DEFAULT_EXECUTION_MODE)
LOCAL_DIR = os.environ.get("LLM_ETL_LOCAL_DIR", DEFAULT_LOCAL_DIR)
NAMESPACE = os.environ.get("LLM_ETL_NAMESPACE", EXAMPLE_NAMESPACE)

if EXECUTION_MODE == LOCAL_MODE:
    # The bundled GGUF, checked by its sha256 and served by llama.cpp's server, or a connection's server.
    MODEL_SETTINGS: dict[str, Any] = {"llm_conn_id": os.environ.get("LLM_ETL_LLM_CONN_ID") or None}
    DEFAULTS = {
        "input": "examples/drug_reviews_sample.jsonl",
        "output": "out/llm_enrichment",
        "model": "smollm2",
    }
else:
    MODEL_SETTINGS = {
        "backend": "{{ params.backend }}",
        "model_source": os.environ.get("LLM_ETL_MODEL_SOURCE", DEFAULT_MODEL_SOURCE),
        "gpus": int(os.environ.get("LLM_ETL_GPUS", "1")),
    }
    for setting in ("url_secret", "sha256", "claim", "image", "path", "size"):
        if value := os.environ.get(f"LLM_ETL_MODEL_{setting.upper()}"):
            MODEL_SETTINGS[f"model_{setting}"] = value
    if work_claim_size := os.environ.get("LLM_ETL_WORK_CLAIM_SIZE"):
        MODEL_SETTINGS["work_claim_size"] = work_claim_size
        MODEL_SETTINGS["work_storage_class"] = os.environ.get("LLM_ETL_WORK_STORAGE_CLASS") or None
    if cache_access_modes := os.environ.get("LLM_ETL_MODEL_CACHE_ACCESS_MODES"):
        # pull and object: the claim the model-cache pod downloads into; ReadWriteMany for several GPU nodes
        MODEL_SETTINGS["model_cache_access_modes"] = [
            m.strip() for m in cache_access_modes.split(",") if m.strip()
        ]
    if cache_storage_class := os.environ.get("LLM_ETL_MODEL_CACHE_STORAGE_CLASS"):
        MODEL_SETTINGS["model_cache_storage_class"] = cache_storage_class
    if checkpoint_every := os.environ.get("LLM_ETL_CHECKPOINT_EVERY"):
        MODEL_SETTINGS["checkpoint_every"] = int(checkpoint_every)
    if worker_image := os.environ.get("LLM_ETL_WORKER_IMAGE"):
        MODEL_SETTINGS["worker_image"] = worker_image
    if server_image := os.environ.get("LLM_ETL_SERVER_IMAGE"):
        MODEL_SETTINGS["server_image"] = server_image
    if pull_policy := os.environ.get(
        "LLM_ETL_IMAGE_PULL_POLICY"
    ):  # IfNotPresent for images loaded into nodes
        MODEL_SETTINGS["image_pull_policy"] = pull_policy
    if gpu_pool := os.environ.get("LLM_ETL_GPU_POOL"):
        # an Airflow pool with a slot per GPU: shards beyond the GPUs queue in Airflow, not as Pending pods
        MODEL_SETTINGS["pool"] = gpu_pool
        MODEL_SETTINGS["pool_slots"] = max(MODEL_SETTINGS["gpus"], 1)
    if store_cidrs := os.environ.get("LLM_ETL_STORE_CIDRS"):
        # the object transport: where the pods may reach a store whose addresses rotate (e.g. AWS S3's ranges)
        MODEL_SETTINGS["store_cidrs"] = [cidr.strip() for cidr in store_cidrs.split(",") if cidr.strip()]
    if deferrable := os.environ.get("LLM_ETL_DEFERRABLE"):
        MODEL_SETTINGS["deferrable"] = deferrable.lower() == "true"
    DEFAULTS = {
        "input": "s3://aws_default@llm-etl/input/drug_reviews_sample.jsonl",
        "output": "s3://aws_default@llm-etl/output",
        "model": "llama3.2:3b",
    }


DEFAULTS = {key: os.environ.get(f"LLM_ETL_DEFAULT_{key.upper()}") or value for key, value in DEFAULTS.items()}


# The trigger form: every Param titled and described; the LLM server's choice only where it applies (local
# execution serves the bundled model with llama.cpp, or through a connection's server). The worker's settings
# take their defaults, choices and ranges from its flags' declaration (worker_param); the stage's sizes from
# its constants. The Params' names are what triggers pass in their conf (record_bytes, shard_bytes).
PARAMS: dict[str, Param] = {
    "input_path": Param(
        DEFAULTS["input"],
        type="string",
        title="Input",
        description="A JSONL or CSV file, plain or gzip, any URI",
    ),
    "output_path": Param(
        DEFAULTS["output"],
        type="string",
        title="Output folder",
        description="Any URI; each run publishes under <output>/<DAG id>/<task group>/<run id>/",
    ),
    "task": worker_param(
        "task",
        title="Task",
        description=f"One of {', '.join(TASK_NAMES)} (custom: give a system prompt and a schema)",
    ),
    "template": worker_param(
        "template",
        default="{review}",  # the example data's text field
        title="Prompt template",
        description="The user prompt, with record fields in braces, e.g. {review}",
    ),
    "model": Param(
        DEFAULTS["model"],
        type="string",
        title="Model",
        description="The model the LLM server serves, e.g. llama3.2:3b for Ollama",
    ),
    **(
        {
            "backend": Param(
                DEFAULT_BACKEND,
                enum=list(BACKENDS),
                title="LLM server",
                description="The server in each pod: ollama, llamacpp or vllm",
            )
        }
        if EXECUTION_MODE != LOCAL_MODE
        else {}
    ),
    "transport": Param(
        os.environ.get("LLM_ETL_TRANSPORT") or DEFAULT_TRANSPORT,
        enum=list(TRANSPORTS),
        title="Transport",
        description=(
            "log: shards in Kubernetes Secrets and results through the pods' logs, no egress (small runs); "
            "object: each pod reads its byte range of the input from the store and writes its results "
            "there (input and output on s3:// or gs://, uncompressed input; large runs)"
        ),
    ),
    "pods": Param(
        int(os.environ.get("LLM_ETL_PODS") or 1),
        type="integer",
        minimum=1,
        maximum=DEFAULT_MAX_SHARDS,
        title="Pods (object transport)",
        description="How many pods, each with its GPUs and one model load, share the input; the log "
        "transport cuts Secret-sized shards instead",
    ),
    "shard_bytes": Param(
        DEFAULT_SHARD_BYTES,
        type="integer",
        minimum=1,
        maximum=SECRET_LIMIT,
        title="Shard size (log transport, compressed bytes)",
        description="The log transport cuts the input into shards of at most this size, one pod each",
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
        description="The JSON schema every answer must match; empty for the other tasks",
    ),
    "label_field": worker_param(
        "label_field",
        title="Label column",
        description="An input field holding a known label (the example data's rating_label): the run's "
        "report shows how often the model agrees with it. Empty: none",
    ),
}


@dag(
    dag_id="llm_enrichment",
    schedule=os.environ.get("LLM_ETL_SCHEDULE") or None,
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
        namespace=NAMESPACE,
        execution_mode=EXECUTION_MODE,
        local_dir=LOCAL_DIR,
        **MODEL_SETTINGS,
    )


llm_enrichment()
