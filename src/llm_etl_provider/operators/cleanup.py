"""Cleanup: delete what a run left (its pods, shard Secrets and key), and sweep what outlived its TTL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from llm_etl_provider.backends import checked_execution_mode, run_backend
from llm_etl_provider.backends.kubernetes import core_v1, delete_managed
from llm_etl_provider.contract.layout import MANAGED_SELECTOR

if TYPE_CHECKING:
    from airflow.sdk import Context


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
        backend = run_backend(
            self.execution_mode,
            dag_id=self.dag_id,
            run_id=run_id,
            namespace=self.namespace,
            kubernetes_conn_id=self.kubernetes_conn_id,
            local_dir=self.local_dir,
            log=self.log,
        )
        deleted = backend.cleanup()
        self.log.info(
            "deleted of run %s: %s", run_id, ", ".join(f"{n} {kind}" for kind, n in deleted.items())
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
        cutoff = datetime.now(UTC) - timedelta(seconds=self.ttl_seconds)
        deleted = delete_managed(
            core_v1(self.kubernetes_conn_id), self.namespace, MANAGED_SELECTOR, older_than=cutoff
        )
        self.log.info(
            "swept %(pods)d pods, %(secrets)d Secrets and %(claims)d work claims older than %(ttl)d s",
            {**deleted, "ttl": self.ttl_seconds},
        )
        return deleted
