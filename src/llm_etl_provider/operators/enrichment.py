"""LLMEnrichmentOperator: one shard, one pod, the worker beside a local LLM server, through KPO."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tenacity
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from llm_etl_provider.pod.builder import (
    DEFAULT_WORKER_IMAGE,
    ModelSpec,
    PodParams,
    ServerSpec,
    build_pod,
)
from llm_etl_provider.run_resources import checked_execution_mode, key_secret_name, local_run_dir
from llm_etl_provider.staging import DEFAULT_RECORD_BYTES
from llm_etl_provider.transport.frames import carries_frame

if TYPE_CHECKING:
    from airflow.sdk import Context
    from kubernetes.client import models as k8s


class FrameFilteringPodManager(PodManager):
    """Copy the worker's progress lines into the Airflow task log, but never its sealed result frames."""

    def _log_message(self, message: str, *args: Any, **kwargs: Any) -> None:
        if carries_frame(message):
            return
        super()._log_message(message, *args, **kwargs)


class LLMEnrichmentOperator(KubernetesPodOperator):
    """Enrich one shard of staged records in a pod: model loader, local LLM server (native sidecar), worker.

    A pod that ended is kept (``on_finish_action="delete_active_pod"``) so that ExtractResultsOperator can
    read the sealed frames from its log; CleanupOperator deletes it. A try that fails while its pod still
    runs deletes the pod, so that it neither holds a GPU nor works the shard beside the retry's pod. Map it
    over the shards from StageInputOperator with ``.partial(...).expand(shard=...)``.

    :param shard: the shard descriptor from StageInputOperator (templated)
    :param key_secret: the Secret with the run's frame key (templated; default: StageInputOperator's)
    :param task: ``sentiment``, ``tags``, ``moderation``, ``entities`` or ``custom`` (templated)
    :param template: the user prompt over record fields, e.g. ``{review}`` (templated)
    :param system_prompt: the system prompt (custom tasks, or to override the catalogue's) (templated)
    :param schema: the output JSON schema of a custom task, as a JSON string (templated)
    :param categories: categories for ``tags``
    :param entity_types: entity types for ``entities``
    :param id_field: the field that identifies a record
    :param concurrency: requests in flight; None: from the server's slots
    :param model: the model the server serves, e.g. ``llama3.2:3b`` (templated)
    :param backend: ``ollama``, ``llamacpp`` or ``vllm``
    :param model_source: ``pull``, ``pvc``, ``object`` or ``image``
    :param model_path: the model's path inside its volume (GGUF file or directory)
    :param model_sha256: the model file's sha256 (``object``; checked for ``pvc``/``image`` when given)
    :param model_url_secret: a Secret whose key ``url`` holds the download URL (``object``)
    :param model_claim: the PersistentVolumeClaim holding the model (``pvc``)
    :param model_image: the OCI image holding the model (``image``)
    :param server_image: the LLM server's image (default per backend)
    :param parallel: requests the server serves at once
    :param gpus: ``nvidia.com/gpu`` for the server (0 for CPU)
    :param worker_image: the worker's image
    :param gpu_node_selector: node selector for GPU nodes
    :param gpu_tolerations: tolerations for GPU node taints
    :param ttl_seconds: the pod's hard limit (``activeDeadlineSeconds``), the run's TTL
    :param max_record_bytes: records over this size are dead-lettered (as staged)
    :param checkpoint_every: records between the worker's checkpoints (default 100): with a shard work claim
        (StageInputOperator's ``work_claim_size``) a retry after a lost pod redoes at most this many
    :param max_dead_letter_ratio: the share of dead letters above which the shard fails (templated; default
        0.1; 1 never fails for bad records)
    :param execution_mode: ``kubernetes``, or ``local``: the same pod's loader, server and worker as local
        processes (llama.cpp's server with a local GGUF), its log written to the local staging folder
    :param local_dir: local mode's staging folder (templated)
    :param local_model_file: local mode's GGUF file (default: the bundled SmolLM2)
    :param llm_conn_id: local mode only: enrich through the server of this ``llm_etl`` connection (e.g. an
        Ollama beside Airflow) instead of loading the model and starting llama.cpp's server
    """

    template_fields: Sequence[str] = (
        *KubernetesPodOperator.template_fields,
        "shard",
        "key_secret",
        "task",
        "template",
        "system_prompt",
        "schema",
        "model",
        "backend",
        "concurrency",
        "max_record_bytes",
        "max_dead_letter_ratio",
        "local_dir",
    )

    def __init__(
        self,
        *,
        shard: dict[str, Any] | str,
        model: str,
        key_secret: str | None = None,
        task: str = "sentiment",
        template: str = "{text}",
        system_prompt: str | None = None,
        schema: str | dict[str, Any] | None = None,
        categories: Sequence[str] | None = None,
        entity_types: Sequence[str] | None = None,
        id_field: str = "id",
        concurrency: int | None = None,
        backend: str = "ollama",
        model_source: str = "pull",
        model_path: str = "model.gguf",
        model_sha256: str | None = None,
        model_url_secret: str | None = None,
        model_claim: str | None = None,
        model_image: str | None = None,
        server_image: str | None = None,
        parallel: int = 4,
        gpus: int = 1,
        worker_image: str = DEFAULT_WORKER_IMAGE,
        gpu_node_selector: dict[str, str] | None = None,
        gpu_tolerations: Sequence[dict[str, Any]] | None = None,
        ttl_seconds: int = 3600,
        max_record_bytes: int | str = DEFAULT_RECORD_BYTES,
        max_dead_letter_ratio: float | str = 0.1,
        checkpoint_every: int | None = None,
        execution_mode: str = "kubernetes",
        local_dir: str | None = None,
        local_model_file: str | None = None,
        llm_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "llm-etl-enrich")
        kwargs.setdefault("on_finish_action", "delete_active_pod")
        kwargs.setdefault("startup_timeout_seconds", 1800)  # the model loads while the pod is Pending
        kwargs.setdefault("init_container_logs", ["model-loader"])  # never the sidecar: it ends with the pod
        kwargs.setdefault("do_xcom_push", False)
        super().__init__(**kwargs)
        self.shard = shard
        self.key_secret = key_secret
        self.model = model
        self.task = task
        self.template = template
        self.system_prompt = system_prompt
        self.schema = schema
        self.categories = list(categories or [])
        self.entity_types = list(entity_types or [])
        self.id_field = id_field
        self.concurrency = concurrency
        self.backend = backend
        self.model_source = model_source
        self.model_path = model_path
        self.model_sha256 = model_sha256
        self.model_url_secret = model_url_secret
        self.model_claim = model_claim
        self.model_image = model_image
        self.server_image = server_image
        self.parallel = parallel
        self.gpus = gpus
        self.worker_image = worker_image
        self.gpu_node_selector = dict(gpu_node_selector or {})
        self.gpu_tolerations = [dict(t) for t in gpu_tolerations or []]
        self.ttl_seconds = ttl_seconds
        self.max_record_bytes = max_record_bytes
        self.max_dead_letter_ratio = max_dead_letter_ratio
        self.checkpoint_every = checkpoint_every
        self.execution_mode = checked_execution_mode(execution_mode)
        self.local_dir = local_dir
        self.local_model_file = local_model_file
        self.llm_conn_id = llm_conn_id
        if llm_conn_id and self.execution_mode != "local":
            raise ValueError(
                "llm_conn_id is for the local execution mode: in Kubernetes the pod serves its own model"
            )

    def worker_args(self) -> list[str]:
        """The task's ``llm-etl-worker`` arguments."""
        args = ["--task", self.task, "--template", self.template, "--id-field", self.id_field]
        args += ["--max-record-bytes", str(self.max_record_bytes)]
        args += ["--max-dead-letter-ratio", str(self.max_dead_letter_ratio)]
        if self.system_prompt:
            args += ["--system-prompt", self.system_prompt]
        if self.schema:
            schema = self.schema if isinstance(self.schema, str) else json.dumps(self.schema)
            args += ["--schema", schema]
        if self.categories:
            args += ["--categories", ",".join(self.categories)]
        if self.entity_types:
            args += ["--entity-types", ",".join(self.entity_types)]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        if self.checkpoint_every:
            args += ["--checkpoint-every", str(self.checkpoint_every)]
        return args

    @staticmethod
    def _shard_args(shard: dict[str, Any]) -> list[str]:
        args = ["--line-offset", str(shard.get("line_offset", 0))]
        if duplicates := shard.get("duplicates"):
            args += ["--duplicate-lines", ",".join(map(str, duplicates))]
        return args

    def pod_params(self, run_id: str) -> PodParams:
        shard = self.shard
        if not isinstance(shard, dict):
            raise TypeError(
                f"shard must be a StageInputOperator shard descriptor, not {type(shard).__name__}"
            )
        return PodParams(
            worker_args=(*self.worker_args(), *self._shard_args(shard)),
            model=ModelSpec(
                name=self.model,
                source=self.model_source,  # type: ignore[arg-type]
                path=self.model_path,
                sha256=self.model_sha256,
                url_secret=self.model_url_secret,
                claim=self.model_claim,
                image=self.model_image,
            ),
            server=ServerSpec(
                backend=self.backend,  # type: ignore[arg-type]
                image=self.server_image,
                parallel=self.parallel,
                gpus=self.gpus,
            ),
            input_secret=shard["secret"],
            key_secret=self.key_secret or key_secret_name(self.dag_id, run_id),
            run_id=run_id,
            shard=int(shard["index"]),
            input_format=shard.get("input_format", "jsonl"),
            worker_image=self.worker_image,
            node_selector=self.gpu_node_selector,
            tolerations=tuple(self.gpu_tolerations),
            active_deadline_seconds=self.ttl_seconds,
            work_claim=shard.get("work_claim"),
        )

    def execute(self, context: Context) -> Any:
        if self.execution_mode == "kubernetes":
            return super().execute(context)
        from llm_etl_provider.local.runner import run_shard_locally

        run_id = str(context["run_id"])
        params = self.pod_params(run_id)
        server = None
        if self.llm_conn_id:
            from llm_etl_provider.hooks.llm_server import LLMServerHook

            server = LLMServerHook(self.llm_conn_id).get_server(model=self.model or None)
        return run_shard_locally(
            build_pod(params),
            staging=local_run_dir(self.local_dir, self.dag_id, run_id),
            shard=params.shard,
            model_file=Path(self.local_model_file) if self.local_model_file else None,
            parallel=self.parallel,
            server=server,
            log=self.log.info,
        )

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        run_id = str(context["run_id"]) if context is not None else "dry-run"
        self.full_pod_spec = PodGenerator.deserialize_model_dict(build_pod(self.pod_params(run_id)))
        return super().build_pod_request_obj(context, dry_run=dry_run)

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(max=15),
        retry=tenacity.retry_if_exception_type((HTTPError, ApiException)),
        reraise=True,
    )
    def _write_logs(self, pod: k8s.V1Pod, follow: bool = False, since_time: Any = None) -> None:
        """Copy the worker's log to the task log after a deferral, without the frames.

        KPO's own version (the deferrable path) logs every line of the base container itself, not through
        the pod manager, so the frame filter must be applied here too.
        """
        since_seconds = None
        if isinstance(since_time, str):  # the trigger's event carries it serialized
            since_time = datetime.datetime.fromisoformat(since_time.replace("Z", "+00:00"))
        if isinstance(since_time, datetime.datetime):
            since_seconds = math.ceil((datetime.datetime.now(tz=datetime.UTC) - since_time).total_seconds())
        logs = self.client.read_namespaced_pod_log(
            name=pod.metadata.name,
            namespace=pod.metadata.namespace,
            container=self.base_container_name,
            follow=follow,
            timestamps=False,
            since_seconds=since_seconds,
            _preload_content=False,
        )
        for raw_line in logs:
            line = raw_line.decode("utf-8", errors="backslashreplace").rstrip("\n")
            if line and not carries_frame(line):
                self.log.info("[%s] %s", self.base_container_name, line)

    @cached_property
    def pod_manager(self) -> PodManager:
        return FrameFilteringPodManager(kube_client=self.client, callbacks=self.callbacks)
