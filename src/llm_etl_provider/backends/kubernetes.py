"""The Kubernetes backend: shards and the key as immutable run-labelled Secrets, one pod per shard through
KubernetesPodOperator, frames read from the pod's log, and everything deleted by the run's labels."""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from llm_etl_provider.backends import (
    DEFAULT_KUBERNETES_CONN_ID,
    DEFAULT_NAMESPACE,
    FrameSource,
    RunBackend,
    TaskLog,
    sweep_reason,
)
from llm_etl_provider.contract import layout
from llm_etl_provider.exceptions import ExtractionError, StagingError, StagingInputError
from llm_etl_provider.staging.cutting import SECRET_LIMIT
from llm_etl_provider.transport.exceptions import FrameKeyError
from llm_etl_provider.transport.keys import decode_key, encode_key, new_key
from llm_etl_provider.transport.sources import pod_log_lines

CLAIM_RELEASE_SECONDS = 180.0  # how long a stage waits for a claim of the plan being deleted to go

if TYPE_CHECKING:
    from llm_etl_provider.staging.cutting import Shard


def _run_labels(
    run_id: str, run_key: str, kind: str, shard: int | None = None, plan: str | None = None
) -> dict[str, str]:
    labels = {
        **layout.MANAGED_BY,
        layout.LABEL_RUN: layout.label_value(run_id),
        layout.LABEL_RUN_KEY: run_key,
        layout.LABEL_KIND: kind,
    }
    if shard is not None:
        labels[layout.LABEL_SHARD] = str(shard)
    if plan is not None:
        labels[layout.LABEL_PLAN] = plan
    return labels


def secret_manifest(
    name: str,
    run_id: str,
    data: dict[str, bytes],
    *,
    run_key: str,
    annotations: dict[str, str],
    kind: str,
    shard: int | None = None,
    plan: str | None = None,
) -> dict[str, Any]:
    """An immutable Opaque Secret labelled with its run (and plan) and annotated with its DAG and deadline."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": name,
            "labels": _run_labels(run_id, run_key, kind, shard, plan),
            "annotations": annotations,
        },
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def claim_manifest(
    name: str,
    run_id: str,
    shard: int | None,
    size: str,
    *,
    run_key: str,
    annotations: dict[str, str],
    storage_class: str | None = None,
    plan: str | None = None,
    kind: str = "work",
    access_modes: tuple[str, ...] = ("ReadWriteOnce",),
) -> dict[str, Any]:
    """A claim of the run: a shard's work volume that outlives its pod (the worker's checkpoint and frame
    spool, so that a retry in a new pod resumes where the lost pod stopped), or the plan's model cache."""
    spec: dict[str, Any] = {"accessModes": list(access_modes), "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "labels": _run_labels(run_id, run_key, kind, shard, plan),
            "annotations": annotations,
        },
        "spec": spec,
    }


def _managed_kinds(api: Any, networking: Any) -> dict[str, tuple[Any, Any]]:
    """What a run creates, by kind: how to list and how to delete it."""
    return {
        "pods": (api.list_namespaced_pod, api.delete_namespaced_pod),
        "secrets": (api.list_namespaced_secret, api.delete_namespaced_secret),
        "claims": (
            api.list_namespaced_persistent_volume_claim,
            api.delete_namespaced_persistent_volume_claim,
        ),
        "network_policies": (
            networking.list_namespaced_network_policy,
            networking.delete_namespaced_network_policy,
        ),
    }


def _delete(delete: Any, name: str, namespace: str, **options: Any) -> bool:
    """Delete one object; False when it was gone already."""
    from kubernetes.client.exceptions import ApiException

    try:
        delete(name, namespace, **options)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return False
    return True


def delete_managed(api: Any, networking: Any, namespace: str, selector: str) -> dict[str, int]:
    """Delete the pods, Secrets, work claims and NetworkPolicies matching ``selector``."""
    kinds = _managed_kinds(api, networking)
    deleted = dict.fromkeys(kinds, 0)
    for kind, (list_them, delete) in kinds.items():
        for item in list_them(namespace, label_selector=selector).items:
            deleted[kind] += _delete(delete, item.metadata.name, namespace, grace_period_seconds=0)
    return deleted


def sweep(
    api: Any,
    networking: Any,
    namespace: str,
    run_state: Callable[[str, str], str | None],
    *,
    now: float,
    unannotated_older_than: datetime,
    log: TaskLog,
) -> dict[str, int]:
    """Delete what llm-etl runs left in ``namespace`` once their run has ended (``run_state(dag_id, run_id)``,
    Airflow's word). A run Airflow counts as running or queued is never touched, however long it runs; a run
    this Airflow does not know (``run_state`` gives None: another deployment's, or a deleted run) is left
    until its recorded deadline (``llm-etl.io/expires-at``, the latest of its resources') has passed.
    Resources that carry no DAG or deadline (made before they did) go by age. Pods get their own grace period:
    a running one is stopped, never killed outright."""
    kinds = _managed_kinds(api, networking)
    runs: dict[tuple[str | None, str | None], list[tuple[str, Any]]] = defaultdict(list)
    for kind, (list_them, _) in kinds.items():
        for item in list_them(namespace, label_selector=layout.MANAGED_SELECTOR).items:
            annotations = item.metadata.annotations or {}
            key = (annotations.get(layout.ANNOTATION_DAG_ID), annotations.get(layout.ANNOTATION_RUN_ID))
            runs[key].append((kind, item))
    deleted = dict.fromkeys(kinds, 0)
    for (dag_id, run_id), items in runs.items():
        deadlines = [
            int(item.metadata.annotations[layout.ANNOTATION_EXPIRES_AT])
            for _, item in items
            if (item.metadata.annotations or {}).get(layout.ANNOTATION_EXPIRES_AT, "").isdigit()
        ]
        if dag_id is not None and run_id is not None:
            reason = sweep_reason(run_state(dag_id, run_id), max(deadlines) if deadlines else None, now)
            if reason is None:
                continue
            why = reason
        else:
            items = [
                (k, i)
                for k, i in items
                if (c := i.metadata.creation_timestamp) and c < unannotated_older_than
            ]
            why = "it carries no run and is older than the TTL"
        for kind, item in items:
            # pods keep their grace period: SIGTERM, and the worker checkpoints
            if _delete(kinds[kind][1], item.metadata.name, namespace):
                deleted[kind] += 1
                log.info("swept %s %s: %s", kind, item.metadata.name, why)
    return deleted


def core_v1(kubernetes_conn_id: str) -> Any:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesHook(conn_id=kubernetes_conn_id).core_v1_client


def networking_v1(kubernetes_conn_id: str) -> Any:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes import client

    return client.NetworkingV1Api(KubernetesHook(conn_id=kubernetes_conn_id).api_client)


class KubernetesBackend(RunBackend):
    """A run in a namespace of a cluster.

    :param namespace: the run's namespace; None: :data:`~llm_etl_provider.backends.DEFAULT_NAMESPACE`
    :param kubernetes_conn_id: the Kubernetes connection; None:
        :data:`~llm_etl_provider.backends.DEFAULT_KUBERNETES_CONN_ID`
    :param key_secret: the Secret with the run's key (default: the stage's name for it)
    :param work_claim_size: give each shard a work claim of this size (e.g. ``1Gi``); None: an emptyDir
    :param work_storage_class: the claims' StorageClass (default: the cluster's)
    :param run_deadline_seconds: from the stage on, how long the run's resources may live once Airflow no
        longer knows the run (another deployment's, a deleted run): the sweeper's deadline
    :param plan: the stage's plan: its key, shards and work claims are named and labelled after it
    :param recorded_run_id: the DAG run the sweeper asks Airflow about, where it is not ``run_id`` (a batch's
        run is its batch, its DAG run the task's that submitted it)
    """

    def __init__(
        self,
        namespace: str | None,
        kubernetes_conn_id: str | None,
        *,
        dag_id: str,
        run_id: str,
        log: TaskLog,
        key_secret: str | None = None,
        work_claim_size: str | None = None,
        work_storage_class: str | None = None,
        run_deadline_seconds: float = layout.DEFAULT_RUN_DEADLINE_SECONDS,
        scope: str | None = None,
        plan: str | None = None,
        recorded_run_id: str | None = None,
    ) -> None:
        self.namespace = namespace or DEFAULT_NAMESPACE
        self.kubernetes_conn_id = kubernetes_conn_id or DEFAULT_KUBERNETES_CONN_ID
        self.run_id = run_id
        self.annotations = layout.run_annotations(
            dag_id, recorded_run_id or run_id, time.time() + run_deadline_seconds
        )
        self.scope = scope or dag_id
        self.plan = plan
        self.run_key = layout.run_key(self.scope, run_id)
        self.prefix = (
            layout.plan_prefix(self.scope, run_id, plan) if plan else layout.run_prefix(self.scope, run_id)
        )
        self.key_secret = key_secret or layout.key_secret_name(self.prefix)
        self.log = log
        self.work_claim_size = work_claim_size
        self.work_storage_class = work_storage_class

    @cached_property
    def api(self) -> Any:
        return core_v1(self.kubernetes_conn_id)

    @property
    def plan_selector(self) -> str:
        """The label selector of what this plan of the run staged (the whole run's without a plan)."""
        selector = layout.run_selector(self.scope, self.run_id)
        return f"{selector},{layout.LABEL_PLAN}={self.plan}" if self.plan else selector

    def open_plan(self) -> tuple[bytes, bool]:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.api.read_namespaced_secret(self.key_secret, self.namespace)
            return decode_key(
                _secret_value(secret.data, layout.KEY_FILE_NAME), f"Secret {self.key_secret}"
            ), False
        except ApiException as exc:
            if exc.status != 404:
                raise StagingError(
                    f"cannot read the plan's key Secret {self.namespace}/{self.key_secret}: HTTP {exc.status}"
                ) from None
        except FrameKeyError as exc:
            self.log.warning("%s: staging the plan again", exc)
        # What the plan's lost key sealed (a spool on a work claim) cannot be read: start the plan afresh.
        self.remove_plan()
        key = new_key()
        self._create_secret(
            self._secret(self.key_secret, {layout.KEY_FILE_NAME: encode_key(key).encode()}, kind="key")
        )
        return key, True

    def remove_plan(self) -> None:
        deleted = delete_managed(self.api, self.networking, self.namespace, self.plan_selector)
        if any(deleted.values()):
            self.log.info("removed what the plan had staged: %s", deleted)

    def stage_shard(self, shard: Shard, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        data = {layout.input_file_name(shard.input_format): shard.data}
        where = self._stage_shard_secret(
            shard.index, data, files or {}, f"shard {shard.index}", "lower max_shard_bytes"
        )
        if self.work_claim_size:
            where["work_claim"] = self._create_work_claim(shard.index)
        return where

    def stage_object_shard(
        self, index: int, transport: bytes, files: Mapping[str, bytes] | None = None
    ) -> dict[str, Any]:
        data = {layout.OBJECT_TRANSPORT_FILE_NAME: transport}
        remedy = "raise checkpoint_every (fewer parts), or use more pods"
        return self._stage_shard_secret(index, data, files or {}, f"shard {index}'s URLs", remedy)

    def _stage_shard_secret(
        self, index: int, data: dict[str, bytes], files: Mapping[str, bytes], described: str, remedy: str
    ) -> dict[str, Any]:
        """Create shard ``index``'s Secret of ``data`` and the ``files`` beside it (its duplicate lines, its
        reused results), if they fit one; else say what (``described``) does not fit, and the ``remedy``."""
        name = layout.shard_secret_name(self.prefix, index)
        data.update(files)
        if (size := sum(map(len, data.values()))) > SECRET_LIMIT:
            beside = f" and its {', '.join(sorted(files))}" if files else ""
            raise StagingInputError(
                f"{described}{beside} take {size} bytes, over a Secret's {SECRET_LIMIT}: {remedy}"
            )
        self._create_secret(self._secret(name, data, kind="shard", shard=index))
        return {"secret": name, "key_secret": self.key_secret}

    def planned_transport(self, index: int) -> bytes:
        from kubernetes.client.exceptions import ApiException

        name = layout.shard_secret_name(self.prefix, index)
        try:
            secret = self.api.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            raise ExtractionError(f"cannot read shard {index}'s Secret {name}: HTTP {exc.status}") from None
        return _secret_value(secret.data, layout.OBJECT_TRANSPORT_FILE_NAME)

    def put_urls(self, index: int, document: bytes) -> str:
        """Create or replace shard ``index``'s URL Secret: the one Secret of a run that is not immutable, so
        that the kubelet updates the mounted file in place while the pod runs."""
        from kubernetes.client.exceptions import ApiException

        name = layout.urls_secret_name(self.prefix, index)
        manifest = self._secret(name, {layout.OBJECT_TRANSPORT_FILE_NAME: document}, kind="urls", shard=index)
        manifest["immutable"] = False
        try:
            try:
                self.api.create_namespaced_secret(self.namespace, manifest)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.api.replace_namespaced_secret(name, self.namespace, manifest)
        except ApiException as exc:
            raise ExtractionError(
                f"cannot write shard {index}'s URL Secret {name}: HTTP {exc.status}"
            ) from None
        return name

    def prepare_pod(self, *, model_claim: str | None, network_policy: dict[str, Any]) -> None:
        """Before a shard's pod: check that the model claim it mounts is there (the model-cache pod
        downloaded into it), and create its NetworkPolicy."""
        if model_claim is not None:
            self.require_claim(model_claim)
        self.create_network_policy(network_policy)

    def create_network_policy(self, manifest: dict[str, Any]) -> None:
        """Create a pod's NetworkPolicy, unless an earlier try made it (the same policy)."""
        self._create_kept(self.networking.create_namespaced_network_policy, manifest, ExtractionError)

    def _create_kept(
        self, create: Callable[..., Any], manifest: dict[str, Any], error: type[Exception]
    ) -> bool:
        """Create ``manifest`` with ``create``, unless it exists already (409): an earlier try's or stage's,
        the same object, which a pod of the plan may be using. Whether it was created."""
        from kubernetes.client.exceptions import ApiException

        try:
            create(self.namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                name = f"{manifest['kind']} {self.namespace}/{manifest['metadata']['name']}"
                raise error(f"cannot create {name}: HTTP {exc.status}") from None
            return False
        return True

    def require_claim(self, name: str) -> None:
        """Fail at once, not after the pod's start-up limit, when the claim the pod mounts is not there."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.read_namespaced_persistent_volume_claim(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise ExtractionError(
                    f"the model claim {self.namespace}/{name} is not there: the model-cache step "
                    "(ModelCacheOperator, the task group's cache_model) downloads the model into it before "
                    "any enrichment pod starts; run it (clear it with this task)"
                ) from None
            raise ExtractionError(
                f"cannot read the claim {self.namespace}/{name}: HTTP {exc.status}"
            ) from None

    def create_model_claim(
        self, size: str, *, access_modes: tuple[str, ...], storage_class: str | None = None
    ) -> str:
        """Create the plan's model claim, unless the plan made it before (the model is in it), and return
        its name."""
        name = layout.model_claim_name(self.prefix)
        manifest = claim_manifest(
            name, self.run_id, None, size, run_key=self.run_key, annotations=self.annotations,
            storage_class=storage_class, plan=self.plan, kind="model", access_modes=access_modes,
        )  # fmt: skip
        self._create_claim(manifest)
        return name

    @cached_property
    def networking(self) -> Any:
        return networking_v1(self.kubernetes_conn_id)

    def frame_source(self, index: int) -> FrameSource:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.api.read_namespaced_secret(self.key_secret, self.namespace)
            key = decode_key(_secret_value(secret.data, layout.KEY_FILE_NAME), f"Secret {self.key_secret}")
        except ApiException as exc:
            raise ExtractionError(
                f"cannot read the run's key Secret {self.key_secret}: HTTP {exc.status}"
            ) from None
        except FrameKeyError as exc:
            raise ExtractionError(str(exc)) from None
        selector = f"{self.plan_selector},{layout.LABEL_SHARD}={index}"
        pods = list(self.api.list_namespaced_pod(self.namespace, label_selector=selector).items)
        ended = [p for p in pods if p.status is not None and p.status.phase in ("Succeeded", "Failed")]
        succeeded = [p for p in ended if p.status.phase == "Succeeded"]
        if not ended:
            phases = (
                ", ".join(f"{p.metadata.name}={p.status.phase if p.status else '?'}" for p in pods) or "none"
            )
            raise ExtractionError(f"shard {index}: expected an ended pod, found {phases}")
        # Two pods succeed when a try fails after its pod ended (KPO keeps a finished pod) and the retry
        # enriches the shard again: each log holds the whole shard; the latest try is the one on record. A
        # failed pod is read when no try succeeded: a worker over the dead-letter threshold wrote its whole
        # stream (published as failed), and one that crashed left no trailer (refused, nothing published).
        finished = succeeded or ended
        latest = max(finished, key=_try_order)
        if len(finished) > 1:
            self.log.warning(
                "shard %d: %d pods ended (%s); reading the latest try's, %s",
                index, len(finished), ", ".join(p.metadata.name for p in finished), latest.metadata.name,
            )  # fmt: skip
        name, container = latest.metadata.name, layout.WORKER_CONTAINER
        lines = pod_log_lines(name, self.namespace, container=container, core_api=self.api)
        where = f"pod {self.namespace}/{name} container {container}"
        return FrameSource(key, lines, where, attempt=_try_number(latest))

    def cleanup(self) -> dict[str, int]:
        selector = layout.run_selector(self.scope, self.run_id)
        deleted = delete_managed(self.api, self.networking, self.namespace, selector)
        self.log.info(
            "deleted %(pods)d pods, %(secrets)d Secrets, %(claims)d work claims and %(network_policies)d "
            "NetworkPolicies of run %(run)s",
            {**deleted, "run": self.run_id},
        )
        return deleted

    def pod_timings(self) -> dict[int, dict[str, Any]]:
        selector = self.plan_selector
        by_shard: dict[int, list[Any]] = defaultdict(list)
        for pod in self.api.list_namespaced_pod(self.namespace, label_selector=selector).items:
            shard = (pod.metadata.labels or {}).get(layout.LABEL_SHARD, "")
            if shard.isdigit() and pod.status is not None:
                by_shard[int(shard)].append(pod)
        timings = {}
        for shard, pods in by_shard.items():
            measured = [pod_timing(pod) for pod in sorted(pods, key=_try_order)]
            # every try's pod held its GPU; the last try's loader and server are the shard's on record
            timings[shard] = {
                **measured[-1],
                "pods": len(pods),
                "pod_seconds": round(sum(m["pod_seconds"] or 0 for m in measured), 1),
            }
        return timings

    def _secret(
        self, name: str, data: dict[str, bytes], *, kind: str, shard: int | None = None
    ) -> dict[str, Any]:
        return secret_manifest(
            name,
            self.run_id,
            data,
            run_key=self.run_key,
            annotations=self.annotations,
            kind=kind,
            shard=shard,
            plan=self.plan,
        )

    def _create_secret(self, manifest: dict[str, Any]) -> None:
        """Create the Secret, unless the plan staged it before: a stage run again cuts the same shards, and a
        pod of the plan may be reading it."""
        self._create_kept(self.api.create_namespaced_secret, manifest, StagingError)

    def _create_work_claim(self, index: int) -> str:
        """Create the shard's work claim, unless the plan made it before (its checkpoint lives there)."""
        name = layout.work_claim_name(self.prefix, index)
        manifest = claim_manifest(
            name,
            self.run_id,
            index,
            str(self.work_claim_size),
            run_key=self.run_key,
            annotations=self.annotations,
            storage_class=self.work_storage_class,
            plan=self.plan,
        )
        self._create_claim(manifest)
        return name

    def _create_claim(self, manifest: dict[str, Any]) -> None:
        """Create the claim, or keep the plan's earlier one; one being deleted is waited out and made anew:
        a claim lives on, Terminating, until no pod uses it (the ``kubernetes.io/pvc-protection``
        finalizer), and keeping it would leave the new pod waiting for a claim that then vanishes."""
        create = self.api.create_namespaced_persistent_volume_claim
        if not self._create_kept(create, manifest, StagingError) and self._waited_out(
            manifest["metadata"]["name"]
        ):
            self._create_kept(create, manifest, StagingError)

    def _waited_out(self, name: str, timeout: float = CLAIM_RELEASE_SECONDS) -> bool:
        """Whether the claim ``name`` was being deleted and is gone now (waited for up to ``timeout``
        seconds); False when it stands, to be kept."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout
        while True:
            try:
                claim = self.api.read_namespaced_persistent_volume_claim(name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                where = f"{self.namespace}/{name}"
                raise StagingError(f"cannot read the claim {where}: HTTP {exc.status}") from None
            if claim.metadata.deletion_timestamp is None:
                return False
            if time.monotonic() > deadline:
                raise StagingError(
                    f"the claim {self.namespace}/{name} is still being deleted after {timeout:.0f} s "
                    "(a pod still mounts it?): it cannot be made again for this plan yet"
                )
            time.sleep(1)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 1) if start is not None and end is not None else None


def pod_timing(pod: Any) -> dict[str, float | None]:
    """From one pod's status: its wall time (start to its last container's end), the model loader's time, and
    how long the LLM server took to be ready (its start to the worker's)."""
    status = pod.status
    started: dict[str, datetime | None] = {}
    ended: dict[str, Any] = {}  # the terminated states
    for container in (status.init_container_statuses or []) + (status.container_statuses or []):
        state = container.state
        current = None if state is None else (state.terminated or state.running)
        started[container.name] = None if current is None else current.started_at
        if state is not None and state.terminated is not None:
            ended[container.name] = state.terminated
    finished = [t.finished_at for t in ended.values() if t.finished_at is not None]
    loader = ended.get(layout.LOADER_CONTAINER)
    return {
        "pod_seconds": _seconds(status.start_time, max(finished)) if finished else None,
        "model_load_seconds": _seconds(loader.started_at, loader.finished_at) if loader else None,
        "server_start_seconds": _seconds(
            started.get(layout.SERVER_CONTAINER), started.get(layout.WORKER_CONTAINER)
        ),
    }


def _try_number(pod: Any) -> int | None:
    """The try of the task that created ``pod``: KPO's ``try_number`` label."""
    label = (pod.metadata.labels or {}).get("try_number", "")
    return int(label) if label.isdigit() else None


def _try_order(pod: Any) -> tuple[int, datetime]:
    """Order pods by their try, then by creation."""
    created = pod.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)
    return (_try_number(pod) or 0, created)


def _secret_value(data: dict[str, str] | None, key: str) -> bytes:
    if not data or key not in data:
        raise FrameKeyError(f"the Secret has no {key!r} entry")
    return base64.b64decode(data[key])
