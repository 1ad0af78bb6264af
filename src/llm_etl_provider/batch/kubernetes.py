"""A batch of prompts as a run of the provider's job in Kubernetes: one pod per shard, read back verified.

A batch is a run (scope :data:`~llm_etl_provider.batch.job.BATCH_SCOPE`, run id its batch id) in the
deployment's namespace: its plan's key and shards staged as immutable Secrets (the log transport), one
enrichment pod per shard built as the operator builds it (model loader, the model's server as a native
sidecar, the worker; each with its NetworkPolicy), and a record Secret that says whose batch it is. A
``pull`` or ``object`` model is first downloaded into the plan's model claim by a model-cache pod that sees
no prompt; the shards' pods are created once it has succeeded (by :meth:`KubernetesBatchJobs.state`, the
poll).

Nothing runs in the polling process: the task, its retry or its trigger reads the pods' state by the batch's
labels, so any of them re-attaches. The results are read from the pods' logs, verified and opened with the
plan's key, when common.ai asks for them. Everything carries the submitting DAG run's annotations, so the
sweeper removes it once that run has ended; a cancel removes it at once.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_etl_provider.backends.kubernetes import KubernetesBackend, core_v1, secret_manifest
from llm_etl_provider.batch.job import (
    BATCH_SCOPE,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    MAX_SHARD_BYTES,
    PROMPT_FIELD,
    BatchIdentity,
    BatchNotFoundError,
    BatchResult,
    BatchServer,
    BatchSettings,
    BatchState,
    batch_id_of,
    identity_matches,
    read_results,
)
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.pod.builder import (
    ENRICHMENT_COMPONENT,
    MODEL_CACHE_COMPONENT,
    ModelSpec,
    PodParams,
    ServerSpec,
    build_model_cache_pod,
    build_pod,
    network_policy,
    pod_invocation,
    set_pull_policy,
)

if TYPE_CHECKING:
    from llm_etl_provider.config import LLMEtlConfig

RECORD_FILE = "batch.json"
# A pod's waiting reasons that end a batch at once: no wait makes them pass
HOPELESS_WAITS = ("InvalidImageName", "CreateContainerConfigError", "CreateContainerError")

log = logging.getLogger(__name__)


def record_secret_name(batch_id: str) -> str:
    """The Secret recording whose batch it is (found without knowing its plan)."""
    return f"{layout.run_prefix(BATCH_SCOPE, batch_id)}-batch"


def shard_pod_name(prefix: str, index: int) -> str:
    return f"{prefix}-shard-{index}"


def model_cache_pod_name(prefix: str) -> str:
    return f"{prefix}-model-cache"


class KubernetesBatchJobs:
    """Batches in the deployment's namespace (``[llm_etl]``: namespace, connection, model source, images).

    :param config: the deployment's ``[llm_etl]``
    """

    def __init__(self, config: LLMEtlConfig):
        self.config = config

    def backend(
        self, batch_id: str, plan: str | None = None, owner: tuple[str, str] | None = None
    ) -> KubernetesBackend:
        dag_id, run_id = owner or (BATCH_SCOPE, batch_id)
        return KubernetesBackend(
            self.config.namespace, self.config.kubernetes_conn_id, dag_id=dag_id, run_id=batch_id,
            log=log, scope=BATCH_SCOPE, plan=plan, recorded_run_id=run_id,
        )  # fmt: skip

    @cached_property
    def api(self) -> Any:
        return core_v1(self.config.kubernetes_conn_id)

    def server(self) -> ServerSpec:
        return ServerSpec(
            backend=self.config.backend,  # type: ignore[arg-type]
            image=self.config.server_image,
            gpus=self.config.gpus,
        )

    def model(self, settings: BatchSettings, prefix: str) -> ModelSpec:
        model = ModelSpec.of(settings.model, self.config)
        return ModelSpec.of(
            settings.model,
            self.config,
            cache_claim=layout.model_claim_name(prefix) if model.downloaded else None,
        )

    def check(self, settings: BatchSettings) -> None:
        """Build a shard's pod (and the model-cache pod) for ``settings`` without creating anything: what the
        deployment's ``[llm_etl]`` leaves unset or wrong fails here (PodSpecError, WorkerImageUnsetError)."""
        unstaged = "llm-etl-check"  # names only: nothing is created
        shard = ShardDescriptor(
            index=0, records=1, line_offset=0, input_format="jsonl", secret=unstaged, key_secret=unstaged
        )
        self._pod(settings, "llm-etl-check", "check", shard)
        model = self.model(settings, "llm-etl-check")
        if model.downloaded:
            build_model_cache_pod(model, self.server(), worker_image=self.config.worker_image)

    def submit(
        self,
        prompts: Sequence[tuple[str, str]],
        settings: BatchSettings,
        identity: BatchIdentity,
        server: BatchServer,
        *,
        owner: tuple[str, str] | None = None,
        api_key: str | None = None,
    ) -> str:
        """Stage ``prompts`` (custom id, prompt) as the batch's Secrets and create its pods; return its id. A
        batch of that id running or completed is kept; one that failed or was cancelled is removed and made
        afresh. The pods serve the model themselves: ``server`` and ``api_key`` (a connection's) are not
        used."""
        batch_id = batch_id_of(identity.idempotency_key, identity.input_fingerprint)
        if self.recorded(batch_id) is not None:
            if self.state(batch_id).status in (IN_PROGRESS, COMPLETED):
                return batch_id
            self.backend(batch_id).cleanup()
        from llm_etl_provider.staging.cutting import plan_shards
        from llm_etl_provider.staging.log_transport import stage_shards

        plan = layout.plan_id(BATCH_SCOPE, batch_id, identity.input_fingerprint, asdict(settings))
        backend = self.backend(batch_id, plan, owner)
        with tempfile.TemporaryDirectory(prefix="llm-etl-batch-") as scratch:
            source = Path(scratch) / "prompts.jsonl"
            with source.open("w", encoding="utf-8") as out:
                for custom_id, prompt in prompts:
                    out.write(json.dumps({"id": custom_id, PROMPT_FIELD: prompt}, ensure_ascii=False) + "\n")
            try:
                shards = stage_shards(
                    backend, plan_shards(source, input_format="jsonl", max_shard_bytes=MAX_SHARD_BYTES),
                    malformed={}, duplicates=[], plan=plan,
                )  # fmt: skip
            except BaseException:
                backend.cleanup()
                raise
        record = {
            "batch_id": batch_id,
            "plan": plan,
            "identity": asdict(identity),
            "settings": asdict(settings),
            "request_count": len(prompts),
            "shards": shards,
            "owner": list(owner) if owner else None,  # the pods made later carry it too
        }
        manifest = secret_manifest(
            record_secret_name(batch_id), batch_id, {RECORD_FILE: json.dumps(record).encode()},
            run_key=backend.run_key, annotations=backend.annotations, kind="batch", plan=plan,
        )  # fmt: skip
        try:
            backend.api.create_namespaced_secret(backend.namespace, manifest)
            if self.model(settings, backend.prefix).downloaded:
                self._start_model_cache(backend, settings)
            else:
                self._start_shards(backend, record)
        except BaseException:
            backend.cleanup()  # a batch half made is no batch: nothing of it may stay
            raise
        return batch_id

    def recorded(self, batch_id: str) -> dict[str, Any] | None:
        """The batch's record, or None where no batch of that id is in the namespace."""
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.api.read_namespaced_secret(record_secret_name(batch_id), self.config.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        record: dict[str, Any] = json.loads(base64.b64decode((secret.data or {})[RECORD_FILE]))
        return record

    def state(self, batch_id: str) -> BatchState:
        """Where the batch stands, read from its pods; a model downloaded, its shards' pods are created here.
        Raise :class:`BatchNotFoundError` for an unknown batch."""
        record = self.recorded(batch_id)
        if record is None:
            raise BatchNotFoundError(f"no batch {batch_id} in namespace {self.config.namespace}")
        settings = BatchSettings(**record["settings"])
        owner = record.get("owner")
        backend = self.backend(batch_id, record["plan"], (owner[0], owner[1]) if owner else None)
        pods = {
            pod.metadata.name: pod
            for pod in self.api.list_namespaced_pod(
                backend.namespace, label_selector=backend.plan_selector
            ).items
        }
        if self.model(settings, backend.prefix).downloaded:
            cache = pods.get(model_cache_pod_name(backend.prefix))
            if (ended := self._pod_state(cache, "the model-cache pod")) is not None:
                return ended
            if cache is None or cache.status.phase != "Succeeded":
                return BatchState(IN_PROGRESS)
            if not any(shard_pod_name(backend.prefix, int(s["index"])) in pods for s in record["shards"]):
                self._start_shards(backend, record)
                return BatchState(IN_PROGRESS)
        done = 0
        queue = any(pod.status is not None and pod.status.phase == "Running" for pod in pods.values())
        for shard in record["shards"]:
            index = int(shard["index"])
            pod = pods.get(shard_pod_name(backend.prefix, index))
            if (ended := self._pod_state(pod, f"shard {index}'s pod", queue=queue)) is not None:
                return ended
            done += pod is not None and pod.status.phase == "Succeeded"
        return BatchState(COMPLETED if done == len(record["shards"]) else IN_PROGRESS)

    def _pod_state(self, pod: Any, described: str, *, queue: bool = False) -> BatchState | None:
        """The batch's end where ``pod`` failed, is gone, or waits for what never comes; else None.

        A pod waits at most ``[llm_etl] startup_timeout_seconds`` for its start (images, volumes), counted
        from its scheduling; one the scheduler has not placed yet counts from its creation, unless ``queue``
        (another pod of the batch runs: it frees a GPU when it ends, and shards beyond the GPUs queue)."""
        from llm_etl_provider.operators.pod_step import container_exit_code, pod_failure

        if pod is None:
            return BatchState(FAILED, error=f"{described} is gone (deleted, or its node was lost)")
        phase = pod.status.phase if pod.status is not None else None
        if phase == "Failed":
            codes = [
                f"{container} exited {code}"
                for container in (layout.WORKER_CONTAINER, layout.LOADER_CONTAINER)
                if (code := container_exit_code(pod, container))
            ]
            return BatchState(FAILED, error=f"{described} {pod.metadata.name} failed{pod_failure(pod)}"
                              + (f": {', '.join(codes)}" if codes else ""))  # fmt: skip
        if phase not in (None, "Pending"):
            return None
        waiting = _waiting_reasons(pod)
        scheduled = _scheduled_at(pod)
        if scheduled is None and queue:
            return None
        since = scheduled or pod.metadata.creation_timestamp
        age = time.time() - since.timestamp() if since is not None else 0.0
        if set(waiting) & set(HOPELESS_WAITS) or age > self.config.startup_timeout_seconds:
            why = ", ".join(f"{c} {r}" for r, c in waiting.items()) or (
                "waiting" if scheduled else "not scheduled"
            )
            return BatchState(
                FAILED,
                error=f"{described} {pod.metadata.name} did not start in {age:.0f} s ({why}); the "
                "start-up limit is [llm_etl] startup_timeout_seconds",
            )
        return None

    def cancel(self, batch_id: str) -> None:
        """Delete the batch's pods, Secrets, claims and NetworkPolicies."""
        self.backend(batch_id).cleanup()

    def find(self, idempotency_key: str, input_fingerprint: str, not_before: float) -> str | None:
        """The batch this task submitted with this input at or after ``not_before``, or None."""
        batch_id = batch_id_of(idempotency_key, input_fingerprint)
        matches = identity_matches(self.recorded(batch_id), idempotency_key, input_fingerprint, not_before)
        return batch_id if matches else None

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        """Each prompt's outcome: each shard's frames read from its pod's log, verified and opened with the
        plan's key into a scratch folder, then read (results, then dead letters)."""
        record = self.recorded(batch_id)
        if record is None:
            raise BatchNotFoundError(f"no batch {batch_id} in namespace {self.config.namespace}")
        return self._results(batch_id, record)

    def _results(self, batch_id: str, record: dict[str, Any]) -> Iterator[BatchResult]:
        from llm_etl_provider.transport.extract import extract

        backend = self.backend(batch_id, record["plan"])
        with tempfile.TemporaryDirectory(prefix="llm-etl-batch-results-") as scratch:
            for descriptor in record["shards"]:
                shard = ShardDescriptor.from_xcom(descriptor)
                source = backend.frame_source(shard.index)
                folder = Path(scratch) / layout.shard_folder(shard.index)
                extract(
                    source.lines, source.key, folder, run_id=batch_id, shard=shard.index,
                    expected_records=shard.records, expected_input_sha256=shard.input_sha256,
                    expected_attempt=source.attempt, plan=record["plan"], source=source.description,
                )  # fmt: skip
                yield from read_results([folder])

    def _pod(
        self, settings: BatchSettings, prefix: str, batch_id: str, shard: ShardDescriptor
    ) -> dict[str, Any]:
        server = self.server()
        invocation = pod_invocation(
            settings.worker_settings(), run_id=batch_id, shard=shard, server=server, model=settings.model
        )
        pod = build_pod(
            PodParams(
                invocation=invocation,
                model=self.model(settings, prefix),
                server=server,
                input_secret=str(shard.secret),
                key_secret=str(shard.key_secret),
                worker_image=self.config.worker_image,
                active_deadline_seconds=self.config.pod_time_limit_seconds,
                # the try the frames' trailer names: extraction checks it against the pod's
                labels={"try_number": str(invocation.attempt)},
            )
        )
        if self.config.image_pull_policy:
            set_pull_policy(pod, self.config.image_pull_policy)
        return pod

    def _selected(self, backend: KubernetesBackend, shard: int | None = None) -> dict[str, str]:
        labels = {
            **layout.MANAGED_BY,
            layout.LABEL_RUN_KEY: backend.run_key,
            layout.LABEL_PLAN: str(backend.plan),
        }
        if shard is not None:
            labels[layout.LABEL_SHARD] = str(shard)
        return labels

    def _create_pod(
        self, backend: KubernetesBackend, pod: dict[str, Any], name: str, labels: dict[str, str]
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        pod["metadata"].update(name=name, namespace=backend.namespace)
        pod["metadata"]["labels"].update(labels)
        pod["metadata"].setdefault("annotations", {}).update(backend.annotations)
        try:
            backend.api.create_namespaced_pod(backend.namespace, pod)
        except ApiException as exc:
            if exc.status != 409:  # created by an earlier poll
                raise

    def _start_model_cache(self, backend: KubernetesBackend, settings: BatchSettings) -> None:
        """The plan's model claim, and the pod that downloads the model into it (its own NetworkPolicy: the
        only egress of a batch)."""
        model = self.model(settings, backend.prefix)
        claim = backend.create_model_claim(
            model.size,
            access_modes=self.config.model_cache_access_modes,
            storage_class=self.config.model_cache_storage_class,
        )
        selected = self._selected(backend)
        backend.create_network_policy(
            network_policy(
                MODEL_CACHE_COMPONENT, model.source, name=f"{claim}-cache-network",
                selected={layout.LABEL_RUN_KEY: backend.run_key, layout.LABEL_PLAN: str(backend.plan)},
                annotations=backend.annotations,
            )
        )  # fmt: skip
        pod = build_model_cache_pod(model, self.server(), worker_image=self.config.worker_image)
        if self.config.image_pull_policy:
            set_pull_policy(pod, self.config.image_pull_policy)
        pod["spec"]["activeDeadlineSeconds"] = self.config.pod_time_limit_seconds
        self._create_pod(
            backend,
            pod,
            model_cache_pod_name(backend.prefix),
            {**selected, layout.LABEL_RUN: layout.label_value(backend.run_id)},
        )

    def _start_shards(self, backend: KubernetesBackend, record: dict[str, Any]) -> None:
        """Each shard's NetworkPolicy and pod."""
        settings = BatchSettings(**record["settings"])
        for descriptor in record["shards"]:
            shard = ShardDescriptor.from_xcom(descriptor)
            selected = self._selected(backend, shard.index)
            backend.create_network_policy(
                network_policy(
                    ENRICHMENT_COMPONENT, self.config.model_source,
                    name=f"{layout.shard_secret_name(backend.prefix, shard.index)}-network",
                    selected={k: v for k, v in selected.items() if k not in layout.MANAGED_BY},
                    annotations=backend.annotations,
                )
            )  # fmt: skip
            pod = self._pod(settings, backend.prefix, backend.run_id, shard)
            self._create_pod(backend, pod, shard_pod_name(backend.prefix, shard.index), selected)


def _waiting_reasons(pod: Any) -> dict[str, str]:
    """``{reason: container}`` of the pod's containers that wait (an image that cannot be pulled, ...)."""
    status = pod.status
    waiting = {}
    for container in (
        [*(status.init_container_statuses or []), *(status.container_statuses or [])] if status else []
    ):
        if (
            container.state is not None
            and container.state.waiting is not None
            and container.state.waiting.reason
        ):
            waiting[container.state.waiting.reason] = container.name
    return waiting


def _scheduled_at(pod: Any) -> Any:
    """When the scheduler placed ``pod`` (its ``PodScheduled`` condition), or None."""
    for condition in (pod.status.conditions or []) if pod.status is not None else []:
        if condition.type == "PodScheduled" and condition.status == "True":
            return condition.last_transition_time
    return None
