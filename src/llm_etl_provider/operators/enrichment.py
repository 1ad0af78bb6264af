"""LLMEnrichmentOperator: one shard, one pod, the worker beside a local LLM server, through KPO."""

from __future__ import annotations

import datetime
import inspect
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import tenacity
from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from llm_etl_provider.backends import LocalServing, ShardJob, checked_execution_mode
from llm_etl_provider.backends.urls import DEFAULT_URL_RENEW_SECONDS
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import (
    OBJECT_OUTPUT,
    WORKER_SETTINGS,
    WorkerInvocation,
    default_of,
    is_unset,
)
from llm_etl_provider.contract.layout import run_annotations
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import PodSpecError
from llm_etl_provider.operators.base import backend_for
from llm_etl_provider.operators.pod_step import PodStepOperator
from llm_etl_provider.pod.builder import (
    CPU_PARALLEL,
    DEFAULT_MODEL_SIZE,
    DEFAULT_WORKER_IMAGE,
    DOWNLOADED_SOURCES,
    ModelSpec,
    PodParams,
    ServerSpec,
    build_pod,
    pod_invocation,
    shard_network_policy,
)
from llm_etl_provider.transport.frames import carries_frame
from llm_etl_provider.triggers.pod import FrameFilteringPodTrigger, renewer_of

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger
    from kubernetes.client import models as k8s


def _staged_secret(shard: ShardDescriptor) -> str:
    if shard.secret is None:
        raise PodSpecError(
            f"shard {shard.index} was not staged in Kubernetes (no Secret): stage it with the same "
            "execution_mode"
        )
    return shard.secret


def with_keywords(signature: inspect.Signature, defaults: dict[str, Any]) -> inspect.Signature:
    """``signature`` with keyword-only parameters added before its ``**kwargs``."""
    parameters = list(signature.parameters.values())
    variadic = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    named = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in defaults.items()
    ]
    return signature.replace(parameters=[*named, *added, *variadic])


class FrameFilteringPodManager(PodManager):
    """Copy the worker's progress lines into the Airflow task log, and hand them to the DAG's callbacks, but
    never its sealed result frames."""

    def __init__(
        self, kube_client: Any, callbacks: list[type[KubernetesPodOperatorCallback]] | None = None
    ) -> None:
        super().__init__(kube_client, callbacks=[_without_frames(c) for c in callbacks or ()])

    def _log_message(self, message: str, *args: Any, **kwargs: Any) -> None:
        if carries_frame(message):
            return
        super()._log_message(message, *args, **kwargs)


def _without_frames(callback: type[KubernetesPodOperatorCallback]) -> type[KubernetesPodOperatorCallback]:
    """The callback class, whose ``progress_callback`` is not called for a line that carries a frame."""

    def progress_callback(*, line: str, **kwargs: Any) -> None:
        if not carries_frame(line):
            callback.progress_callback(line=line, **kwargs)

    return type(callback.__name__, (callback,), {"progress_callback": staticmethod(progress_callback)})


class LLMEnrichmentOperator(PodStepOperator):
    """Enrich one shard of staged records in a pod: model loader, local LLM server (native sidecar), worker.

    A pod that ended is kept (``on_finish_action="delete_active_pod"``) so that ExtractResultsOperator can
    read the sealed frames from its log; CleanupOperator deletes it. A try that fails while its pod still
    runs deletes the pod, so that it neither holds a GPU nor works the shard beside the retry's pod. A worker
    that exits with a code a retry would meet again (bad settings or input, too many dead letters) fails the
    task without a retry. Map it over the shards from StageInputOperator with
    ``.partial(...).expand(shard=...)``.

    The worker's settings are keyword arguments named as in
    :data:`~llm_etl_provider.contract.invocation.WORKER_SETTINGS` (``task``, ``template``, ``system_prompt``,
    ``schema``, ``categories``, ``entity_types``, ``max_tokens``, ``id_field``, ``concurrency``,
    ``max_record_bytes``, ``max_dead_letter_ratio``, ``checkpoint_every``, ``temperature``, ``max_attempts``,
    ``request_timeout``), all templated, with the worker's defaults and help (``llm-etl-worker --help``).

    :param shard: the shard descriptor from StageInputOperator (templated)
    :param model: the model the server serves, e.g. ``llama3.2:3b`` (templated)
    :param key_secret: the Secret with the run's frame key (templated; default: StageInputOperator's)
    :param backend: ``ollama``, ``llamacpp`` or ``vllm`` (templated)
    :param model_source: ``pull``, ``pvc``, ``object`` or ``image``; ``pull`` and ``object`` are downloaded
        by :class:`~llm_etl_provider.operators.model_cache.ModelCacheOperator` (the task group's
        ``cache_model``) into the plan's model claim before this pod starts, which mounts it read-only: no pod
        that sees a prompt reaches a network for its model
    :param model_path: the model's path inside its volume (GGUF file or directory)
    :param model_sha256: the model file's sha256 (``object``; checked for ``pvc``/``image`` when given)
    :param model_url_secret: a Secret whose key ``url`` holds the download URL (``object``)
    :param model_claim: the PersistentVolumeClaim holding the model (``pvc``)
    :param model_image: the OCI image holding the model (``image``)
    :param model_size: room for a downloaded model (``pull``, ``object``), e.g. ``16Gi``: the model claim's
        size (given to ModelCacheOperator)
    :param server_image: the LLM server's image (default per backend)
    :param parallel: requests the server serves at once (templated); None: sized for the server and its GPU
        (:class:`~llm_etl_provider.pod.builder.ServerSpec`); the worker keeps twice as many in flight
    :param gpus: ``nvidia.com/gpu`` for the server (0 for CPU)
    :param worker_image: the worker's image
    :param gpu_node_selector: node selector for GPU nodes
    :param gpu_tolerations: tolerations for GPU node taints
    :param pod_time_limit_seconds: the pod's hard limit (``activeDeadlineSeconds``, from its start, the model
        load included; default 3 days): a hung worker is ended long before by its liveness probe, so the
        limit only has to outlast the largest shard
    :param worker_memory: the worker container's memory limit (templated; default ``1Gi``): a shard's id
        index grows with its records (:func:`~llm_etl_provider.contract.layout.worker_memory_needed`), and
        the stage refuses a shard this limit cannot hold; give the task group's ``worker_memory``
    :param startup_timeout_seconds: how long the pod may take to start, the model load included (KPO's;
        default 30 minutes)
    :param execution_mode: ``kubernetes``, or ``local``: the pod's loader, server and worker as local
        processes (llama.cpp's server with a local GGUF), its log written to the local staging folder
    :param local_dir: local execution's staging folder (templated)
    :param scope: the pipeline's task group in the DAG (:func:`~llm_etl_provider.contract.layout.run_scope`;
        set by ``llm_enrichment_task_group``): the same for every step of one pipeline
    :param local_model_file: local execution's GGUF file (default: the bundled SmolLM2)
    :param llm_conn_id: local execution only: enrich through the server of this ``llm_etl`` connection (e.g.
        an Ollama beside Airflow) instead of loading the model and starting llama.cpp's server
    :param url_renew_seconds: the object transport: how often the shard's URLs are signed afresh while its
        pod runs (default 5 minutes), by this task or, deferred, by its trigger; they are signed first when
        the pod starts, so URLs of temporary credentials (STS, IRSA, SSO: often an hour) never expire under
        it, and a worker refused an expired URL waits for the renewed one
    """

    # the worker's code, or where the worker never ran, the model loader's
    exit_code_containers = (layout.WORKER_CONTAINER, layout.LOADER_CONTAINER)
    template_fields: Sequence[str] = (
        *KubernetesPodOperator.template_fields,
        "shard",
        "key_secret",
        "model",
        "backend",
        "parallel",
        "local_dir",
        "worker_memory",
        *WORKER_SETTINGS,
    )

    def __init__(
        self,
        *,
        shard: dict[str, Any] | str,
        model: str,
        key_secret: str | None = None,
        backend: str = "ollama",
        model_source: str = "pull",
        model_path: str = "model.gguf",
        model_sha256: str | None = None,
        model_url_secret: str | None = None,
        model_claim: str | None = None,
        model_image: str | None = None,
        model_size: str = DEFAULT_MODEL_SIZE,
        server_image: str | None = None,
        parallel: int | str | None = None,
        gpus: int = 1,
        worker_image: str = DEFAULT_WORKER_IMAGE,
        gpu_node_selector: dict[str, str] | None = None,
        gpu_tolerations: Sequence[dict[str, Any]] | None = None,
        pod_time_limit_seconds: int = layout.DEFAULT_POD_TIME_LIMIT_SECONDS,
        worker_memory: str = layout.DEFAULT_WORKER_MEMORY,
        execution_mode: str = "kubernetes",
        local_dir: str | None = None,
        scope: str | None = None,
        local_model_file: str | None = None,
        llm_conn_id: str | None = None,
        url_renew_seconds: int = DEFAULT_URL_RENEW_SECONDS,
        **kwargs: Any,
    ) -> None:
        settings = {name: kwargs.pop(name) for name in WORKER_SETTINGS if name in kwargs}
        kwargs.setdefault("name", "llm-etl-enrich")
        kwargs.setdefault("on_finish_action", "delete_active_pod")
        # the model loads while the pod is Pending
        kwargs.setdefault("startup_timeout_seconds", layout.DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS)
        kwargs.setdefault("init_container_logs", [layout.LOADER_CONTAINER])  # never the sidecar: it ends last
        kwargs.setdefault("do_xcom_push", False)
        kwargs.setdefault("base_container_name", layout.WORKER_CONTAINER)
        super().__init__(**kwargs)
        for name in WORKER_SETTINGS:
            setattr(self, name, settings.get(name, default_of(name)))
        self.shard = shard
        self.key_secret = key_secret
        self.model = model
        self.backend = backend
        self.model_source = model_source
        self.model_path = model_path
        self.model_sha256 = model_sha256
        self.model_url_secret = model_url_secret
        self.model_claim = model_claim
        self.model_image = model_image
        self.model_size = model_size
        self.server_image = server_image
        self.parallel = parallel
        self.gpus = gpus
        self.worker_image = worker_image
        self.gpu_node_selector = dict(gpu_node_selector or {})
        self.gpu_tolerations = [dict(t) for t in gpu_tolerations or []]
        self.pod_time_limit_seconds = pod_time_limit_seconds
        self.worker_memory = worker_memory
        self.execution_mode = checked_execution_mode(execution_mode)
        self.local_dir = local_dir
        self.scope = scope
        self.local_model_file = local_model_file
        self.llm_conn_id = llm_conn_id
        self.url_renew_seconds = url_renew_seconds
        self._url_renewal: dict[str, Any] | None = None
        if llm_conn_id and self.execution_mode != "local":
            raise ValueError(
                "llm_conn_id is for the local execution mode: in Kubernetes the pod serves its own model"
            )

    # The worker's settings are keyword arguments of their own (so that .partial() accepts them), declared
    # once in the contract: the signature Airflow inspects lists them after the operator's own.
    __init__.__signature__ = with_keywords(  # type: ignore[attr-defined]
        inspect.signature(__init__), {name: default_of(name) for name in WORKER_SETTINGS}
    )

    def server_spec(self) -> ServerSpec:
        return ServerSpec(
            backend=self.backend,  # type: ignore[arg-type]
            image=self.server_image,
            parallel=_optional_int(self.parallel, "parallel"),
            gpus=self.gpus,
        )

    def worker_invocation(
        self, run_id: str, shard: ShardDescriptor, server: ServerSpec, attempt: int = 1
    ) -> WorkerInvocation:
        """The worker's invocation in this shard's pod, for this try of the task (local execution runs it
        with local paths)."""
        settings = {name: getattr(self, name) for name in WORKER_SETTINGS}
        return pod_invocation(
            settings, run_id=run_id, shard=shard, server=server, model=self.model, attempt=attempt
        )

    def pod_params(self, run_id: str, attempt: int = 1) -> PodParams:
        shard = ShardDescriptor.from_xcom(self.shard)
        server = self.server_spec()
        key_secret = (
            self.key_secret or shard.key_secret or layout.key_secret_name(self._prefix(run_id, shard))
        )
        return PodParams(
            invocation=self.worker_invocation(run_id, shard, server, attempt),
            model=ModelSpec(
                name=self.model,
                source=self.model_source,  # type: ignore[arg-type]
                path=self.model_path,
                sha256=self.model_sha256,
                url_secret=self.model_url_secret,
                claim=self.model_claim,
                image=self.model_image,
                size=self.model_size,
                cache_claim=self.model_claim_name(run_id, shard),
            ),
            server=server,
            input_secret=_staged_secret(shard),
            key_secret=key_secret,
            worker_image=self.worker_image,
            node_selector=self.gpu_node_selector,
            tolerations=tuple(self.gpu_tolerations),
            active_deadline_seconds=self.pod_time_limit_seconds,
            worker_memory=str(self.worker_memory),
            work_claim=shard.work_claim,
            input_bytes=shard.bytes if shard.transport == OBJECT_OUTPUT else 0,
            urls_secret=(
                layout.urls_secret_name(self._prefix(run_id, shard), shard.index)
                if shard.transport == OBJECT_OUTPUT
                else None
            ),
        )

    def execute(self, context: Context) -> Any:
        shard = ShardDescriptor.from_xcom(self.shard)
        backend = backend_for(self, context, plan=shard.plan)
        server = None
        if self.llm_conn_id:
            from llm_etl_provider.hooks.llm_server import LLMServerHook

            server = LLMServerHook(self.llm_conn_id).get_server(model=self.model or None)
        serving = LocalServing(
            model_file=Path(self.local_model_file) if self.local_model_file else None,
            parallel=_optional_int(self.parallel, "parallel") or CPU_PARALLEL,
            server=server,
        )
        job = ShardJob(
            invocation=self.worker_invocation(
                str(context["run_id"]), shard, self.server_spec(), context["ti"].try_number
            ),
            shard=shard,
            submit_pod=lambda: super(LLMEnrichmentOperator, self).execute(context),
            serving=serving,
            network_policy=self.network_policy(str(context["run_id"]), shard),
            model_claim=self.model_claim_name(str(context["run_id"]), shard),
        )
        if shard.transport != OBJECT_OUTPUT:
            return backend.enrich(job)
        # URLs signed when the pod starts, renewed while it runs: temporary credentials end long before it
        renewal = {
            "index": shard.index,
            "source": shard.source,
            "parts": shard.parts,
            "plan": shard.plan,
            "scope": self.run_scope,
            "dag_id": self.dag_id,
            "run_id": str(context["run_id"]),
            "pod_time_limit_seconds": self.pod_time_limit_seconds,
            "interval": self.url_renew_seconds,
        }
        renewer = renewer_of(renewal, backend, self.log)
        renewer.renew()
        self._url_renewal = renewal
        with renewer.running(self.url_renew_seconds):  # a deferred pod is renewed by its trigger
            return backend.enrich(job)

    def model_claim_name(self, run_id: str, shard: ShardDescriptor) -> str | None:
        """The claim the plan's model-cache pod downloaded a ``pull`` or ``object`` model into; None for the
        other sources."""
        if self.model_source not in DOWNLOADED_SOURCES:
            return None
        return layout.model_claim_name(self._prefix(run_id, shard))

    def _prefix(self, run_id: str, shard: ShardDescriptor) -> str:
        """The names' prefix of the shard's plan (of the run, for a shard staged without a plan)."""
        if shard.plan:
            return layout.plan_prefix(self.run_scope, run_id, shard.plan)
        return layout.run_prefix(self.run_scope, run_id)

    def _selected(self, run_id: str, shard: ShardDescriptor) -> dict[str, str]:
        """The labels that tell this shard's pods from every other pod: run, plan and shard."""
        labels = {
            layout.LABEL_RUN_KEY: layout.run_key(self.run_scope, run_id),
            layout.LABEL_SHARD: str(shard.index),
        }
        if shard.plan:
            labels[layout.LABEL_PLAN] = shard.plan
        return labels

    def network_policy(self, run_id: str, shard: ShardDescriptor) -> dict[str, Any]:
        """The NetworkPolicy created with this shard's pod (Kubernetes)."""
        name = f"{layout.shard_secret_name(self._prefix(run_id, shard), shard.index)}-network"
        selected = self._selected(run_id, shard)
        return shard_network_policy(
            name,
            {**layout.MANAGED_BY, **selected},
            annotations=run_annotations(self.dag_id, run_id),
            # the object transport: the store's endpoint only, as the stage resolved it
            store_egress=[(str(address), int(port)) for address, port in shard.egress],
        )

    @property
    def run_scope(self) -> str:
        """Whose runs this step works on (:meth:`RunStepOperator.run_scope`'s rule; KPO is its base)."""
        return layout.run_scope(self.dag_id, self.scope)

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        run_id = str(context["run_id"]) if context is not None else "dry-run"
        # the worker seals its try into the trailer; KPO labels the pod with the same try
        attempt = context["ti"].try_number if context is not None else 1
        pod = build_pod(self.pod_params(run_id, attempt))
        pod["metadata"].setdefault("annotations", {}).update(run_annotations(self.dag_id, run_id))
        pod["metadata"]["labels"].update(self._selected(run_id, ShardDescriptor.from_xcom(self.shard)))
        return self.request_pod(pod, context, dry_run)

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
        try:
            for raw_line in logs:
                line = raw_line.decode("utf-8", errors="backslashreplace").rstrip("\n")
                if line and not carries_frame(line):
                    self.log.info("[%s] %s", self.base_container_name, line)
        finally:
            logs.close()
            logs.release_conn()

    def defer(self, *, trigger: BaseTrigger, **kwargs: Any) -> NoReturn:
        """Defer to a trigger whose periodic logs (``logging_interval``) leave out the frames, and that renews
        an object-transport shard's URLs while it watches the pod."""
        if type(trigger) is KubernetesPodTrigger:
            trigger = FrameFilteringPodTrigger.from_trigger(trigger, url_renewal=self._url_renewal)
        super().defer(trigger=trigger, **kwargs)

    @cached_property
    def pod_manager(self) -> PodManager:
        return FrameFilteringPodManager(kube_client=self.client, callbacks=self.callbacks)


def _optional_int(value: Any, name: str) -> int | None:
    """A templated integer setting, or None where it is unset (:func:`is_unset`)."""
    if is_unset(value):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PodSpecError(f"{name} must be an integer, not {value!r}") from None
