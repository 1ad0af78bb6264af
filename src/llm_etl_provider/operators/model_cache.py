"""ModelCacheOperator: download a ``pull`` or ``object`` model into the plan's model claim, in a pod that
never sees a prompt, before any enrichment pod starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from llm_etl_provider.backends.kubernetes import KubernetesBackend
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.layout import (
    DEFAULT_BACKEND,
    DEFAULT_CACHE_ACCESS_MODES,
    DEFAULT_MODEL_PATH,
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODEL_SOURCE,
)
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import PodSpecError, WorkerImageUnsetError
from llm_etl_provider.operators.pod_step import PodStepOperator
from llm_etl_provider.pod.builder import (
    DOWNLOADED_SOURCES,
    MODEL_CACHE_COMPONENT,
    ModelSpec,
    ServerSpec,
    build_model_cache_pod,
    network_policy,
)

if TYPE_CHECKING:
    from airflow.sdk import Context
    from kubernetes.client import models as k8s

DEFAULT_CACHE_START_TIMEOUT_SECONDS = 900  # scheduling and the image pull; the download runs after it


class ModelCacheOperator(PodStepOperator):
    """Download the model of a ``pull`` or ``object`` source into the stage's plan's model claim
    (``layout.model_claim_name``), which it creates, in a pod of its own: the only pod of a run that reaches
    a network for its model (DNS and HTTPS, through its own NetworkPolicy), and one that never sees a prompt.
    Every enrichment pod of the plan mounts the claim read-only and has no egress for its model. The model
    is downloaded once per plan, not once per shard; run again (a clear), it keeps the claim, and the loader
    keeps a file whose sha256 already matches (``ollama pull`` fetches only what changed).

    The claim is ``ReadWriteOnce`` unless ``cache_access_modes`` says otherwise: the shards' pods must then
    run on the node that mounts it. With more than one GPU node, give ``("ReadWriteMany",)`` and a
    ``cache_storage_class`` that offers it (EFS, Filestore, Azure Files, CephFS, NFS), or serve the model from
    a ``pvc`` or ``image`` source. The claim is the run's: the cleanup and the sweeper delete it.

    :param shards: the shard descriptors from StageInputOperator (templated): their plan names the claim
    :param model: the model's name (Ollama's tag for ``pull``)
    :param backend: the LLM server (``ollama`` pulls; ``llamacpp`` downloads a GGUF file)
    :param model_source: ``pull`` or ``object``
    :param model_path: the GGUF file's path in the claim (``object``)
    :param model_sha256: the GGUF file's sha256 (``object``)
    :param model_url_secret: a Secret whose key ``url`` holds the download URL (``object``)
    :param model_size: the claim's size
    :param cache_access_modes: the claim's access modes
    :param cache_storage_class: the claim's StorageClass (default: the cluster's)
    :param server_image: the Ollama image that pulls (default: the server's)
    :param worker_image: the image whose ``llm-etl load-model`` downloads an ``object`` model (required for
        ``object``: no registry publishes it)
    :param run_deadline_seconds: how long the claim may live once Airflow no longer knows the run
    :param scope: the pipeline's task group (set by ``llm_enrichment_task_group``)
    """

    exit_code_containers = (layout.WORKER_CONTAINER,)  # the loader runs as the pod's base container
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "shards", "model", "backend")

    def __init__(
        self,
        *,
        shards: Any,
        model: str,
        backend: str = DEFAULT_BACKEND,
        model_source: str = DEFAULT_MODEL_SOURCE,
        model_path: str = DEFAULT_MODEL_PATH,
        model_sha256: str | None = None,
        model_url_secret: str | None = None,
        model_size: str = DEFAULT_MODEL_SIZE,
        cache_access_modes: Sequence[str] = DEFAULT_CACHE_ACCESS_MODES,
        cache_storage_class: str | None = None,
        server_image: str | None = None,
        worker_image: str | None = None,
        run_deadline_seconds: int = layout.DEFAULT_RUN_DEADLINE_SECONDS,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        if model_source not in DOWNLOADED_SOURCES:
            raise ValueError(f"ModelCacheOperator downloads pull or object models, not {model_source!r}")
        kwargs.setdefault("name", "llm-etl-model-cache")
        kwargs.setdefault("startup_timeout_seconds", DEFAULT_CACHE_START_TIMEOUT_SECONDS)
        kwargs.setdefault("do_xcom_push", False)
        kwargs.setdefault("on_finish_action", "delete_pod")
        super().__init__(**kwargs)
        self.shards = shards
        self.model = model
        self.backend = backend
        self.model_source = model_source
        self.model_path = model_path
        self.model_sha256 = model_sha256
        self.model_url_secret = model_url_secret
        self.model_size = model_size
        self.cache_access_modes = tuple(cache_access_modes)
        self.cache_storage_class = cache_storage_class
        self.server_image = server_image
        self.worker_image = worker_image
        self.run_deadline_seconds = run_deadline_seconds
        self.scope = scope

    @property
    def run_scope(self) -> str:
        return layout.run_scope(self.dag_id, self.scope)

    def plan(self) -> str | None:
        """The stage's plan of this run (None when it staged no shard)."""
        if not isinstance(self.shards, list):
            raise TypeError(f"shards must be the stage's list of shard descriptors, not {type(self.shards)}")
        plans = {ShardDescriptor.from_xcom(shard).plan for shard in self.shards}
        if len(plans) > 1:
            raise ValueError(f"the shards come from more than one plan: {sorted(map(str, plans))}")
        return next(iter(plans), None)

    def run_backend(self, context: Context) -> KubernetesBackend:
        return KubernetesBackend(
            self.namespace,
            self.kubernetes_conn_id,
            dag_id=self.dag_id,
            run_id=str(context["run_id"]),
            log=self.log,
            run_deadline_seconds=self.run_deadline_seconds,
            scope=self.run_scope,
            plan=self.plan(),
        )

    def execute(self, context: Context) -> Any:
        if not self.shards:
            raise AirflowSkipException("the stage staged no shard: no model to cache")
        backend = self.run_backend(context)
        if len(self.shards) > 1 and self.cache_access_modes == ("ReadWriteOnce",):
            self.log.warning(
                "the model claim is ReadWriteOnce: the %d shards' pods can mount it on one node only; "
                "with more than one GPU node give cache_access_modes=('ReadWriteMany',) and a storage "
                "class that has it",
                len(self.shards),
            )
        claim = backend.create_model_claim(
            self.model_size, access_modes=self.cache_access_modes, storage_class=self.cache_storage_class
        )
        self.log.info("caching model %s (%s) in claim %s", self.model, self.model_source, claim)
        backend.create_network_policy(
            network_policy(
                MODEL_CACHE_COMPONENT,
                self.model_source,
                name=f"{claim}-cache-network",
                selected=self._selected(backend),
                annotations=layout.run_annotations(self.dag_id, str(context["run_id"])),
            )
        )
        return super().execute(context)

    def _selected(self, backend: KubernetesBackend) -> dict[str, str]:
        """The labels that tell this plan's model-cache pod from every other pod: run and plan."""
        labels = {layout.LABEL_RUN_KEY: backend.run_key}
        if backend.plan:
            labels[layout.LABEL_PLAN] = backend.plan
        return labels

    def _labels(self, context: Context, backend: KubernetesBackend) -> dict[str, str]:
        return {
            **layout.MANAGED_BY,
            layout.LABEL_RUN: layout.label_value(str(context["run_id"])),
            **self._selected(backend),
        }

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        if context is None:
            claim = "dry-run-model"
            labels: dict[str, str] = {}
            annotations: dict[str, str] = {}
        else:
            backend = self.run_backend(context)
            claim = layout.model_claim_name(backend.prefix)
            labels = self._labels(context, backend)
            annotations = layout.run_annotations(self.dag_id, str(context["run_id"]))
        server = ServerSpec(backend=self.backend, image=self.server_image, gpus=0)  # type: ignore[arg-type]
        try:
            model = ModelSpec.of(self.model, self, cache_claim=claim)
            pod = build_model_cache_pod(model, server, worker_image=self.worker_image)
        except WorkerImageUnsetError:
            raise  # a setting a retry would meet again
        except PodSpecError as exc:
            raise AirflowException(str(exc)) from None
        pod["metadata"]["labels"].update(labels)
        pod["metadata"].setdefault("annotations", {}).update(annotations)
        return self.request_pod(pod, context, dry_run)
