"""Cleanup: delete what a run left (its pods, shard Secrets and key), and sweep what outlived its TTL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from llm_etl_provider.backends import DEFAULT_KUBERNETES_CONN_ID, DEFAULT_NAMESPACE, DEFAULT_SWEEP_TTL_SECONDS
from llm_etl_provider.backends.kubernetes import core_v1, networking_v1, sweep
from llm_etl_provider.backends.local import sweep_local
from llm_etl_provider.contract.object_transport import TRANSPORT_FOLDER
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.transport.extract import remove_stale_staging, remove_tree

if TYPE_CHECKING:
    from airflow.sdk import Context


class CleanupOperator(RunStepOperator):
    """Delete the run's pods, shard Secrets, key and work claims (or its local staging files).

    Use it as the teardown of the run (``.as_teardown(setups=stage)``), so that it runs after success,
    failure and a killed or failed-marked run alike. Deleting the key Secret makes the run's frames unreadable
    even where copies of the pod log survive. Takes the run's ``namespace``, ``kubernetes_conn_id``,
    ``execution_mode`` and ``local_dir`` (:class:`~llm_etl_provider.operators.base.RunStepOperator`).

    :param output_path: the pipeline's output folder (templated): the object transport's part objects and
        checkpoints under the run's ``_transport/`` are removed too (the results stay), and nothing of
        another run's
    """

    template_fields: Sequence[str] = ("namespace", "local_dir", "output_path")

    def __init__(self, *, output_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output_path = output_path

    def execute(self, context: Context) -> dict[str, int]:
        deleted = backend_for(self, context).cleanup()
        if self.output_path:
            transport = self.run_output(context) / TRANSPORT_FOLDER
            deleted["transport_folders"] = int(transport.exists())
            remove_tree(transport)
            if deleted["transport_folders"]:
                self.log.info("removed the object transport's parts and checkpoints under %s", transport)
        return deleted


class SweepExpiredOperator(BaseOperator):
    """Delete what llm-etl runs left once Airflow says their run ended: the safety net for runs that never
    reached their cleanup (a lost worker, a stage killed mid-way, a deleted DAG run). A run Airflow counts as
    running or queued is never touched, however long it runs; a run this Airflow does not know (another
    deployment's in the same namespace, a deleted run) is left until its recorded deadline (the stage's
    ``run_deadline_seconds``). Schedule it from a small maintenance DAG.

    :param ttl_seconds: resources made before runs recorded their DAG and deadline, and the extraction
        staging under ``output_paths``, are removed once older than this (default one hour)
    :param namespace: the namespace to sweep (templated); None: no cluster (local execution only)
    :param kubernetes_conn_id: the Kubernetes connection
    :param output_paths: output folders (any ObjectStoragePath URI) under which to remove the decrypted
        staging (``_tmp-*``) that killed extractions left, once older than the TTL (templated)
    :param local_dirs: local execution's staging folders (``local_dir``), whose run folders (shards and
        keys in plain files) are swept by the same rule (templated)
    """

    template_fields: Sequence[str] = ("namespace", "output_paths", "local_dirs")

    def __init__(
        self,
        *,
        ttl_seconds: int = DEFAULT_SWEEP_TTL_SECONDS,
        namespace: str | None = DEFAULT_NAMESPACE,
        kubernetes_conn_id: str = DEFAULT_KUBERNETES_CONN_ID,
        output_paths: Sequence[str] = (),
        local_dirs: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ttl_seconds = ttl_seconds
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.output_paths = output_paths
        self.local_dirs = local_dirs

    def execute(self, context: Context) -> dict[str, int]:
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.ttl_seconds)
        ti = context["ti"]

        def run_state(dag_id: str, run_id: str) -> str | None:
            try:
                state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
            except Exception:  # noqa: BLE001 - not found (or not answered): only the deadline decides
                return None
            return dag_run_state_value(state)

        deleted: dict[str, int] = {}
        if self.namespace:
            deleted = sweep(
                core_v1(self.kubernetes_conn_id),
                networking_v1(self.kubernetes_conn_id),
                self.namespace,
                run_state,
                now=now.timestamp(),
                unannotated_older_than=cutoff,
                log=self.log,
            )
        deleted["local_dirs"] = sum(
            sweep_local(
                local_dir,
                run_state,
                now=now.timestamp(),
                unrecorded_older_than=cutoff.timestamp(),
                log=self.log,
            )
            for local_dir in self.local_dirs
        )
        deleted["staging"] = sum(
            remove_stale_staging(ObjectStoragePath(path), older_than=cutoff.timestamp())
            for path in self.output_paths
        )
        self.log.info("swept what ended or expired runs left: %s (TTL %d s)", deleted, self.ttl_seconds)
        return deleted


def dag_run_state_value(state: Any) -> str | None:
    """A DAG run's state as its plain value: the Task SDK gives its generated ``DagRunState`` enum, whose
    ``str()`` is ``'DagRunState.SUCCESS'``, not ``'success'``."""
    if state is None:
        return None
    return str(state.value) if isinstance(state, Enum) else str(state)
