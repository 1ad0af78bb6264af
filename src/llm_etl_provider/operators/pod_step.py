"""What the provider's KubernetesPodOperators share: a pod built from its manifest, and the pod's own exit
code as the task's outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from llm_etl_provider.exceptions import worker_exit_error
from llm_etl_provider.pod.builder import set_pull_policy

if TYPE_CHECKING:
    from airflow.sdk import Context
    from kubernetes.client import models as k8s


class PodStepOperator(KubernetesPodOperator):
    """A KubernetesPodOperator whose pod is a manifest built by :mod:`llm_etl_provider.pod.builder`, and whose
    failure says which of ``exit_code_containers`` (in that order) exited with which code, failing at once
    when a retry would meet the same (:func:`~llm_etl_provider.exceptions.worker_exit_error`)."""

    exit_code_containers: tuple[str, ...] = ()

    def request_pod(self, manifest: dict[str, Any], context: Context | None, dry_run: bool) -> k8s.V1Pod:
        """KPO's pod request for ``manifest``, with KPO's ``image_pull_policy`` (when given) for every
        container (``IfNotPresent`` or ``Never`` for images loaded into the node: no registry serves them)."""
        if self.image_pull_policy:
            set_pull_policy(manifest, self.image_pull_policy)
        self.full_pod_spec = PodGenerator.deserialize_model_dict(manifest)
        return super().build_pod_request_obj(context, dry_run=dry_run)

    def cleanup(
        self,
        pod: k8s.V1Pod,
        remote_pod: k8s.V1Pod,
        xcom_result: dict[str, Any] | None = None,
        context: Context | None = None,
    ) -> None:
        """KPO's cleanup, with the containers' exit code turned into the task's outcome."""
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowSkipException:
            raise
        except AirflowException as exc:
            why = pod_failure(remote_pod)
            for container in self.exit_code_containers:
                if code := container_exit_code(remote_pod, container):
                    where = f"pod {remote_pod.metadata.name} {container}{why}"
                    raise worker_exit_error(code, where) from exc
            if why:  # evicted, or past its deadline, before any container exited: a retry may do
                raise AirflowException(f"pod {remote_pod.metadata.name} failed{why}") from exc
            raise


def pod_failure(pod: k8s.V1Pod | None) -> str:
    """Why the kubelet ended ``pod``, as its status says (``Evicted: …ephemeral storage…``, a container's
    ``OOMKilled``), for the task's error: `` (why)``, or empty when it says nothing."""
    status = pod.status if pod is not None else None
    if status is None:
        return ""
    reasons = (
        [f"{status.reason}: {status.message}" if status.message else status.reason] if status.reason else []
    )
    for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        terminated = container.state.terminated if container.state is not None else None
        if terminated is not None and terminated.reason not in (None, "Completed", "Error"):
            reasons.append(f"{container.name} {terminated.reason}")
    return f" ({'; '.join(reasons)})" if reasons else ""


def container_exit_code(pod: k8s.V1Pod | None, container: str) -> int | None:
    """The exit code of ``container`` (init containers included) in ``pod``, once it has ended."""
    status_of = pod.status if pod is not None else None
    statuses = [
        *((status_of.container_statuses or []) if status_of else []),
        *((status_of.init_container_statuses or []) if status_of else []),
    ]
    for status in statuses:
        if status.name == container and status.state is not None and status.state.terminated is not None:
            return int(status.state.terminated.exit_code)
    return None
