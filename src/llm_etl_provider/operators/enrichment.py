"""LLMEnrichmentOperator: one shard enriched in a Kubernetes pod.

:class:`LLMEnrichmentOperator` is KubernetesPodOperator with public overrides only: the pod is built from its
manifest, and the worker's progress (never its frames) reaches the task log through
:mod:`llm_etl_provider.pod.progress`. Local execution has its own operator,
:class:`~llm_etl_provider.operators.local_enrichment.LocalEnrichmentOperator`; the task group picks one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import pendulum
import tenacity
from airflow.providers.cncf.kubernetes.callbacks import ExecutionMode
from airflow.providers.cncf.kubernetes.operators.pod import (
    KubernetesPodOperator,
    PodCredentialsExpiredFailure,
)
from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.providers.cncf.kubernetes.utils.container import container_is_running, container_is_terminated
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.backends.urls import DEFAULT_URL_RENEW_SECONDS
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import (
    OBJECT_OUTPUT,
    WORKER_SETTINGS,
)
from llm_etl_provider.contract.layout import (
    DEFAULT_BACKEND,
    DEFAULT_GPUS,
    DEFAULT_MODEL_PATH,
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODEL_SOURCE,
    run_annotations,
)
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import PodSpecError
from llm_etl_provider.operators.pod_step import PodStepOperator
from llm_etl_provider.operators.shard_run import (
    ShardRun,
    optional_int,
    renewing_urls,
    take_worker_settings,
    with_worker_settings,
)
from llm_etl_provider.pod.builder import (
    DOWNLOADED_SOURCES,
    ENRICHMENT_COMPONENT,
    ModelSpec,
    PodParams,
    ServerSpec,
    build_pod,
    network_policy,
)
from llm_etl_provider.pod.progress import ProgressReader
from llm_etl_provider.triggers.pod import UrlRenewingPodTrigger

if TYPE_CHECKING:
    import datetime

    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger
    from kubernetes.client import models as k8s


def pod_ended(pod: k8s.V1Pod) -> bool:
    return pod.status is not None and pod.status.phase in ("Succeeded", "Failed")


def _staged_secret(shard: ShardDescriptor) -> str:
    if shard.secret is None:
        raise PodSpecError(
            f"shard {shard.index} was not staged in Kubernetes (no Secret): stage it with the same "
            "execution_mode"
        )
    return shard.secret


class LLMEnrichmentOperator(PodStepOperator):
    """Enrich one shard in a Kubernetes pod: model loader, local LLM server (native sidecar), worker.

    A pod that ended is kept (``on_finish_action="delete_active_pod"``) so that ExtractResultsOperator can
    read the sealed frames from its log; CleanupOperator deletes it. A try that fails while its pod still
    runs deletes the pod, so that it neither holds a GPU nor works the shard beside the retry's pod. A worker
    that exits with a code a retry would meet again (bad settings or input, too many dead letters) fails the
    task without a retry. Map it over the shards from StageInputOperator with
    ``.partial(...).expand(shard=...)``.

    The worker's progress lines are copied into the task log while it runs (deferred: when it ends), by
    :class:`~llm_etl_provider.pod.progress.ProgressReader`, and handed to the DAG's ``callbacks``
    (``progress_callback``); its log also carries the sealed frames, so KPO's own copying (``get_logs``) is
    off.

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
    :param worker_image: the worker's image, by digest (required: no registry publishes it, see
        ``scripts/build-images.sh``); a try without it fails at once, before any pod is created
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
    :param scope: the pipeline's task group in the DAG (:func:`~llm_etl_provider.contract.layout.run_scope`;
        set by ``llm_enrichment_task_group``): the same for every step of one pipeline
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
        "worker_memory",
        *WORKER_SETTINGS,
    )

    def __init__(
        self,
        *,
        shard: dict[str, Any] | str,
        model: str,
        key_secret: str | None = None,
        backend: str = DEFAULT_BACKEND,
        model_source: str = DEFAULT_MODEL_SOURCE,
        model_path: str = DEFAULT_MODEL_PATH,
        model_sha256: str | None = None,
        model_url_secret: str | None = None,
        model_claim: str | None = None,
        model_image: str | None = None,
        model_size: str = DEFAULT_MODEL_SIZE,
        server_image: str | None = None,
        parallel: int | str | None = None,
        gpus: int = DEFAULT_GPUS,
        worker_image: str | None = None,
        gpu_node_selector: dict[str, str] | None = None,
        gpu_tolerations: Sequence[dict[str, Any]] | None = None,
        pod_time_limit_seconds: int = layout.DEFAULT_POD_TIME_LIMIT_SECONDS,
        worker_memory: str = layout.DEFAULT_WORKER_MEMORY,
        scope: str | None = None,
        url_renew_seconds: int = DEFAULT_URL_RENEW_SECONDS,
        **kwargs: Any,
    ) -> None:
        if "execution_mode" in kwargs:
            raise TypeError(
                "LLMEnrichmentOperator runs a Kubernetes pod: for local execution use "
                "LocalEnrichmentOperator (llm_enrichment_task_group picks it for "
                f"execution_mode={LOCAL_MODE!r})"
            )
        if kwargs.get("get_logs"):
            raise ValueError(
                "get_logs would copy the worker's sealed result frames into the task log: the operator "
                "copies its progress lines itself"
            )
        settings = take_worker_settings(kwargs)
        kwargs["get_logs"] = False
        kwargs.setdefault("name", "llm-etl-enrich")
        kwargs.setdefault("on_finish_action", "delete_active_pod")
        # the model loads while the pod is Pending
        kwargs.setdefault("startup_timeout_seconds", layout.DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS)
        kwargs.setdefault("init_container_logs", [layout.LOADER_CONTAINER])  # never the sidecar: it ends last
        kwargs.setdefault("do_xcom_push", False)
        kwargs.setdefault("base_container_name", layout.WORKER_CONTAINER)
        super().__init__(**kwargs)
        for name, value in settings.items():
            setattr(self, name, value)
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
        self.scope = scope
        self.url_renew_seconds = url_renew_seconds
        self._url_renewal: dict[str, Any] | None = None
        self._progress: dict[str, ProgressReader] = {}

    __init__.__signature__ = with_worker_settings(__init__)  # type: ignore[attr-defined]

    @property
    def run_scope(self) -> str:
        """Whose runs this step works on (:meth:`RunStepOperator.run_scope`'s rule; KPO is its base)."""
        return layout.run_scope(self.dag_id, self.scope)

    def shard_run(self, context: Context | None) -> ShardRun:
        return ShardRun.of(self.shard, scope=self.run_scope, dag_id=self.dag_id, context=context)

    def server_spec(self) -> ServerSpec:
        return ServerSpec(
            backend=self.backend,  # type: ignore[arg-type]
            image=self.server_image,
            parallel=optional_int(self.parallel, "parallel"),
            gpus=self.gpus,
        )

    def pod_params(self, run: ShardRun) -> PodParams:
        shard = run.shard
        server = self.server_spec()
        by_object = shard.transport == OBJECT_OUTPUT
        return PodParams(
            invocation=run.invocation({n: getattr(self, n) for n in WORKER_SETTINGS}, server, self.model),
            model=ModelSpec.of(self.model, self, cache_claim=self.model_claim_name(run)),
            server=server,
            input_secret=_staged_secret(shard),
            key_secret=self.key_secret or shard.key_secret or layout.key_secret_name(run.prefix),
            worker_image=self.worker_image,
            node_selector=self.gpu_node_selector,
            tolerations=tuple(self.gpu_tolerations),
            active_deadline_seconds=self.pod_time_limit_seconds,
            worker_memory=str(self.worker_memory),
            work_claim=shard.work_claim,
            input_bytes=shard.bytes if by_object else 0,
            urls_secret=layout.urls_secret_name(run.prefix, shard.index) if by_object else None,
        )

    def model_claim_name(self, run: ShardRun) -> str | None:
        """The claim the plan's model-cache pod downloaded a ``pull`` or ``object`` model into; None for the
        other sources."""
        if self.model_source not in DOWNLOADED_SOURCES:
            return None
        return layout.model_claim_name(run.prefix)

    def _selected(self, run: ShardRun) -> dict[str, str]:
        """The labels that tell this shard's pods from every other pod: run, plan and shard."""
        labels = {
            layout.LABEL_RUN_KEY: layout.run_key(run.scope, run.run_id),
            layout.LABEL_SHARD: str(run.shard.index),
        }
        if run.shard.plan:
            labels[layout.LABEL_PLAN] = run.shard.plan
        return labels

    def network_policy(self, run: ShardRun) -> dict[str, Any]:
        """The NetworkPolicy created with this shard's pod."""
        return network_policy(
            ENRICHMENT_COMPONENT,
            self.model_source,
            name=f"{layout.shard_secret_name(run.prefix, run.shard.index)}-network",
            selected=self._selected(run),
            annotations=run_annotations(run.dag_id, run.run_id),
            # the object transport: the store's endpoint only, as the stage resolved it
            store_egress=[(str(address), int(port)) for address, port in run.shard.egress],
        )

    def execute(self, context: Context) -> Any:
        from llm_etl_provider.backends.kubernetes import KubernetesBackend

        run = self.shard_run(context)
        backend = KubernetesBackend(
            self.namespace,
            self.kubernetes_conn_id,
            dag_id=self.dag_id,
            run_id=run.run_id,
            log=self.log,
            scope=self.run_scope,
            plan=run.shard.plan,
        )
        backend.prepare_pod(model_claim=self.model_claim_name(run), network_policy=self.network_policy(run))
        self._url_renewal = run.url_renewal(self.url_renew_seconds, self.pod_time_limit_seconds)
        with renewing_urls(self._url_renewal, backend, self.log):  # deferred, its trigger renews them
            return super().execute(context)

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        run = self.shard_run(context)
        pod = build_pod(self.pod_params(run))
        pod["metadata"].setdefault("annotations", {}).update(run_annotations(self.dag_id, run.run_id))
        pod["metadata"]["labels"].update(self._selected(run))
        return self.request_pod(pod, context, dry_run)

    def progress_reader(self, pod: k8s.V1Pod, mode: ExecutionMode) -> ProgressReader:
        """What copies the worker's progress lines into the task log and to the DAG's callbacks; one per pod,
        kept across KPO's retries so that no line is copied twice."""
        name = pod.metadata.name
        if name not in self._progress:

            def on_line(line: str, at: datetime.datetime) -> None:
                self.log.info("[%s] %s", self.base_container_name, line)
                for callback in self.callbacks:
                    callback.progress_callback(
                        line=line, client=self.client, mode=mode, container_name=self.base_container_name,
                        timestamp=pendulum.instance(at), pod=pod,
                    )  # fmt: skip

            self._progress[name] = ProgressReader(
                self.client, name, pod.metadata.namespace, self.base_container_name, on_line
            )
        reader = self._progress[name]
        reader.core_api = self.client  # new credentials, after a refresh
        return reader

    @tenacity.retry(
        wait=tenacity.wait_exponential(max=15),
        retry=tenacity.retry_if_exception_type(PodCredentialsExpiredFailure),
        reraise=True,
    )
    def await_pod_completion(self, pod: k8s.V1Pod) -> None:
        """Wait for the worker to end, copying its progress into the task log as it comes; expired
        credentials are refreshed and the wait goes on, as in KPO's. (KPO's wait, with ``get_logs`` off,
        polls the worker's state only, and would wait for ever on a pod that failed before the worker
        started.)"""
        reader = self.progress_reader(pod, ExecutionMode.SYNC)
        while True:
            try:
                remote = self.pod_manager.read_pod(pod)
            except ApiException as exc:
                if exc.status == 404:  # deleted under the task (killed, evicted): KPO's cleanup says so
                    return
                if exc.status == 401:  # a run that outlives its token
                    self.refresh_clients()
                    raise PodCredentialsExpiredFailure("Kubernetes credentials expired: retrying") from exc
                raise
            if container_is_running(remote, self.base_container_name):
                self._read_progress(reader, follow=True)  # until it ends, or the connection drops
            elif container_is_terminated(remote, self.base_container_name) or pod_ended(remote):
                self._read_progress(reader)
                return
            else:
                time.sleep(self.base_container_status_polling_interval)

    def refresh_clients(self) -> None:
        """Forget KPO's API clients (its cached ``hook``, ``client`` and ``pod_manager``): the next use makes
        new ones, with fresh credentials."""
        for name in ("hook", "client", "pod_manager"):
            self.__dict__.pop(name, None)

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """After a deferral: the worker's progress lines into the task log, then KPO's re-entry."""
        if event.get("status") in ("error", "failed", "timeout", "success"):
            try:
                pod = self.hook.get_pod(event["name"], event["namespace"])
            except ApiException as exc:  # KPO's re-entry says what became of it
                self.log.warning("could not read the worker's progress: HTTP %s %s", exc.status, exc.reason)
            else:
                self._read_progress(self.progress_reader(pod, ExecutionMode.ASYNC))
        return super().trigger_reentry(context, event)

    def _read_progress(self, reader: ProgressReader, *, follow: bool = False) -> None:
        """Progress only: a read that fails is tried again, or its lines lost; the pod's outcome decides."""
        try:
            reader.read(follow=follow)
        except ApiException as exc:
            self.log.warning("could not read the worker's progress: HTTP %s %s", exc.status, exc.reason)
        except HTTPError as exc:  # a followed log that timed out in silence, or a dropped connection
            self.log.debug("reading the worker's progress stopped: %s", exc)

    def defer(self, *, trigger: BaseTrigger, **kwargs: Any) -> NoReturn:
        """Defer to a trigger that renews an object-transport shard's URLs while it watches the pod."""
        if type(trigger) is KubernetesPodTrigger and self._url_renewal is not None:
            trigger = UrlRenewingPodTrigger.from_trigger(trigger, url_renewal=self._url_renewal)
        super().defer(trigger=trigger, **kwargs)
