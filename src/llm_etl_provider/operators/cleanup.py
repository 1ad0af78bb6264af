"""Cleanup: delete what a run left (its pods, shard Secrets and key), and sweep what outlived its TTL."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from llm_etl_provider.run_resources import (
    MANAGED_SELECTOR,
    checked_execution_mode,
    local_run_dir,
    run_selector,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


def _delete_all(
    api: Any, namespace: str, selector: str, *, older_than: datetime | None = None
) -> dict[str, int]:
    """Delete the pods, Secrets and work claims matching ``selector`` (created before ``older_than``)."""
    from kubernetes.client.exceptions import ApiException

    deleted = {"pods": 0, "secrets": 0, "claims": 0}
    kinds = (
        ("pods", api.list_namespaced_pod, api.delete_namespaced_pod),
        ("secrets", api.list_namespaced_secret, api.delete_namespaced_secret),
        (
            "claims",
            api.list_namespaced_persistent_volume_claim,
            api.delete_namespaced_persistent_volume_claim,
        ),
    )
    for kind, list_them, delete in kinds:
        for item in list_them(namespace, label_selector=selector).items:
            created = item.metadata.creation_timestamp
            if older_than is not None and (created is None or created > older_than):
                continue
            try:
                delete(item.metadata.name, namespace, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                continue
            deleted[kind] += 1
    return deleted


class CleanupOperator(BaseOperator):
    """Delete the run's pods, shard Secrets and key (or its local staging files).

    Use it as the teardown of the run (``.as_teardown(setups=stage)``), so that it runs after success,
    failure and a killed or failed-marked run alike. Deleting the key Secret makes the run's frames unreadable
    even where copies of the pod log survive.

    :param namespace: the namespace of the run (templated)
    :param kubernetes_conn_id: the Kubernetes connection
    :param execution_mode: ``kubernetes`` or ``local``
    :param local_dir: local mode's staging folder (templated)
    """

    template_fields: Sequence[str] = ("namespace", "local_dir")

    def __init__(
        self,
        *,
        namespace: str = "default",
        kubernetes_conn_id: str = "kubernetes_default",
        execution_mode: str = "kubernetes",
        local_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.execution_mode = checked_execution_mode(execution_mode)
        self.local_dir = local_dir

    def execute(self, context: Context) -> dict[str, int]:
        run_id = str(context["run_id"])
        if self.execution_mode == "local":
            root = local_run_dir(self.local_dir, self.dag_id, run_id)
            existed = root.exists()
            shutil.rmtree(root, ignore_errors=True)
            self.log.info("removed local staging %s", root if existed else "(none)")
            return {"local_dirs": int(existed)}
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        api = KubernetesHook(conn_id=self.kubernetes_conn_id).core_v1_client
        deleted = _delete_all(api, self.namespace, run_selector(run_id))
        self.log.info(
            "deleted %(pods)d pods, %(secrets)d Secrets and %(claims)d work claims of run %(run)s",
            {**deleted, "run": run_id},
        )
        return deleted


class SweepExpiredOperator(BaseOperator):
    """Delete llm-etl pods and Secrets older than the TTL, whatever their run: the safety net for runs that
    never reached their cleanup (a lost worker, a deleted DAG run). Schedule it from a small maintenance DAG.

    :param ttl_seconds: how long a run's resources may live (default one hour)
    :param namespace: the namespace to sweep (templated)
    :param kubernetes_conn_id: the Kubernetes connection
    """

    template_fields: Sequence[str] = ("namespace",)

    def __init__(
        self,
        *,
        ttl_seconds: int = 3600,
        namespace: str = "default",
        kubernetes_conn_id: str = "kubernetes_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ttl_seconds = ttl_seconds
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id

    def execute(self, context: Context) -> dict[str, int]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        api = KubernetesHook(conn_id=self.kubernetes_conn_id).core_v1_client
        cutoff = datetime.now(UTC) - timedelta(seconds=self.ttl_seconds)
        deleted = _delete_all(api, self.namespace, MANAGED_SELECTOR, older_than=cutoff)
        self.log.info(
            "swept %(pods)d pods, %(secrets)d Secrets and %(claims)d work claims older than %(ttl)d s",
            {**deleted, "ttl": self.ttl_seconds},
        )
        return deleted
