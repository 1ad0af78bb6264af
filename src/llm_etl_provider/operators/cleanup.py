"""Cleanup: delete what a run left (its pods, shard Secrets and key), and sweep what outlived its TTL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from llm_etl_provider.backends.kubernetes import core_v1, delete_managed
from llm_etl_provider.contract.layout import MANAGED_SELECTOR
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.transport.extract import remove_stale_staging

if TYPE_CHECKING:
    from airflow.sdk import Context


class CleanupOperator(RunStepOperator):
    """Delete the run's pods, shard Secrets, key and work claims (or its local staging files).

    Use it as the teardown of the run (``.as_teardown(setups=stage)``), so that it runs after success,
    failure and a killed or failed-marked run alike. Deleting the key Secret makes the run's frames unreadable
    even where copies of the pod log survive. Takes the run's ``namespace``, ``kubernetes_conn_id``,
    ``execution_mode`` and ``local_dir`` (:class:`~llm_etl_provider.operators.base.RunStepOperator`).
    """

    template_fields: Sequence[str] = ("namespace", "local_dir")

    def execute(self, context: Context) -> dict[str, int]:
        return backend_for(self, context).cleanup()


class SweepExpiredOperator(BaseOperator):
    """Delete llm-etl pods and Secrets older than the TTL, whatever their run: the safety net for runs that
    never reached their cleanup (a lost worker, a deleted DAG run). Schedule it from a small maintenance DAG.

    :param ttl_seconds: how long a run's resources may live (default one hour)
    :param namespace: the namespace to sweep (templated)
    :param kubernetes_conn_id: the Kubernetes connection
    :param output_paths: output folders (any ObjectStoragePath URI) under which to remove the decrypted
        staging (``_tmp-*``) that killed extractions left, once older than the TTL (templated)
    """

    template_fields: Sequence[str] = ("namespace", "output_paths")

    def __init__(
        self,
        *,
        ttl_seconds: int = 3600,
        namespace: str = "default",
        kubernetes_conn_id: str = "kubernetes_default",
        output_paths: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ttl_seconds = ttl_seconds
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.output_paths = output_paths

    def execute(self, context: Context) -> dict[str, int]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.ttl_seconds)
        deleted = delete_managed(
            core_v1(self.kubernetes_conn_id), self.namespace, MANAGED_SELECTOR, older_than=cutoff
        )
        deleted["staging"] = sum(
            remove_stale_staging(ObjectStoragePath(path), older_than=cutoff.timestamp())
            for path in self.output_paths
        )
        self.log.info(
            "swept %(pods)d pods, %(secrets)d Secrets, %(claims)d work claims and %(staging)d extraction "
            "staging folders older than %(ttl)d s",
            {**deleted, "ttl": self.ttl_seconds},
        )
        return deleted
