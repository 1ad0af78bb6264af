"""Where a run's shards are staged, enriched and read back: a Kubernetes cluster, or local processes.

Each operator chooses its backend once, with :func:`run_backend`, and calls it; none branches on the mode.
Both backends run the same worker invocation, the same sealed transport and the same extraction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llm_etl_provider.contract import layout

if TYPE_CHECKING:
    from llm_etl_provider.staging.cutting import Shard

KUBERNETES_MODE = "kubernetes"  # execution_mode: a pod per shard
LOCAL_MODE = "local"  # execution_mode: local processes, no Kubernetes
EXECUTION_MODES = (KUBERNETES_MODE, LOCAL_MODE)
DEFAULT_EXECUTION_MODE = KUBERNETES_MODE
# Where a run's resources go when no namespace or connection is given (KubernetesPodOperator's own defaults)
DEFAULT_NAMESPACE = "default"
# The namespace of the example deployment (docker-compose.yaml, the example DAGs, the development cluster)
EXAMPLE_NAMESPACE = "llm-etl"
DEFAULT_KUBERNETES_CONN_ID = "kubernetes_default"
# Local execution's staging folder in the example DAGs (``[llm_etl] local_dir``), where the sweeper looks too
DEFAULT_LOCAL_DIR = "/tmp/llm-etl-staging"  # noqa: S108 - local mode only, a folder of 0700 run folders
# A DAG run's states (the values of Airflow's DagRunState) in which the sweeper may remove what the run left
ENDED_RUN_STATES = ("success", "failed")
# The sweeper's age limit for what carries no run deadline (made before runs recorded one; killed extractions'
# staging)
DEFAULT_SWEEP_TTL_SECONDS = 3600


class TaskLog(Protocol):
    """The task's logger (Airflow's, or any ``logging.Logger``)."""

    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...


def sweep_reason(state: str | None, expires_at: float | None, now: float) -> str | None:
    """Why the sweeper may remove what a run left, or None where it must not: the run ended (Airflow's
    ``state``), or Airflow does not know the run (None: another deployment's, a deleted run) and its recorded
    deadline ``expires_at`` has passed. A run Airflow counts as running or queued is never swept, however
    old."""
    if state in ENDED_RUN_STATES:
        return f"its run ended ({state})"
    if state is None and expires_at is not None and now > expires_at:
        return "its deadline passed (a run unknown to Airflow)"
    return None


def checked_execution_mode(mode: str) -> str:
    """Return ``mode`` if a backend serves it: a typo must fail when the DAG is parsed, not at run time."""
    if mode not in EXECUTION_MODES:
        raise ValueError(f"execution_mode must be one of {', '.join(EXECUTION_MODES)}, not {mode!r}")
    return mode


@dataclass(frozen=True)
class FrameSource:
    """A shard's sealed frame stream and the key that opens it."""

    key: bytes
    lines: Iterator[bytes]
    description: str  # where it comes from, for messages and the manifest (no record content)
    attempt: int | None = None  # the enrichment's try that wrote it: its trailer must say the same


class RunBackend(ABC):
    """One run's resources in one place: its key, its staged shards and its frame streams (each mode's
    enrichment operator runs the shard's worker: a pod, or local processes).

    What a stage stages belongs to its plan (:func:`~llm_etl_provider.contract.layout.plan_id`): a stage that
    runs again with the same plan (Airflow clears a shard's setup with it) keeps the plan's key and staged
    shards, so that work sealed with that key, still running or already ended, stays readable.
    """

    @abstractmethod
    def open_plan(self) -> tuple[bytes, bool]:
        """Return the plan's frame key and whether it is new: the key staged before if it is still there,
        else a new one, staged after removing what the plan's lost key had sealed (work claims, spools)."""

    @abstractmethod
    def stage_shard(self, shard: Shard, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """Stage one shard, with the ``files`` its worker reads beside it (by name: its duplicates file, its
        reused file), unless it is staged already (a stage run again: the same plan cuts the same shards);
        return where it is, as shard descriptor fields (secret, path, work_claim, key_secret)."""

    @abstractmethod
    def stage_object_shard(
        self, index: int, transport: bytes, files: Mapping[str, bytes] | None = None
    ) -> dict[str, Any]:
        """Stage one shard of the object transport, unless it is staged already: its pre-signed URLs
        (:class:`~llm_etl_provider.contract.object_transport.ObjectTransport` as JSON) and the ``files``
        beside them; return where they are, as shard descriptor fields (secret, path, key_secret)."""

    @abstractmethod
    def planned_transport(self, index: int) -> bytes:
        """The object transport: shard ``index``'s document as the stage staged it (its range, digest and
        part count; the URLs in it are the stage's)."""

    @abstractmethod
    def put_urls(self, index: int, document: bytes) -> str:
        """The object transport: give shard ``index``'s worker this document of freshly signed URLs, in place
        of the one it has (the worker re-reads it when the store refuses a URL as expired); return where."""

    @abstractmethod
    def remove_plan(self) -> None:
        """Remove everything the plan staged (a stage that failed after making the plan's key)."""

    @abstractmethod
    def frame_source(self, index: int) -> FrameSource:
        """The frame stream of shard ``index`` (its latest try's log, read lazily), once its enrichment
        has ended."""

    @abstractmethod
    def cleanup(self) -> dict[str, int]:
        """Delete everything the run staged or left, log what; return counts by kind."""

    def pod_timings(self) -> dict[int, dict[str, Any]]:
        """Each shard's pods, measured from their status: ``{shard: {"pods", "pod_seconds", ...}}``; none
        where no pod ran (local execution)."""
        return {}


def run_backend(
    mode: str,
    *,
    dag_id: str,
    run_id: str,
    namespace: str | None,
    kubernetes_conn_id: str | None,
    local_dir: str | None,
    log: TaskLog,
    key_secret: str | None = None,
    work_claim_size: str | None = None,
    work_storage_class: str | None = None,
    run_deadline_seconds: float = layout.DEFAULT_RUN_DEADLINE_SECONDS,
    scope: str | None = None,
    plan: str | None = None,
) -> RunBackend:
    """The backend of ``mode`` for one DAG run and, where given, one plan of it (what a stage staged; the
    steps after the stage take it from their shard descriptor). ``key_secret`` and the work claims:
    Kubernetes only."""
    if checked_execution_mode(mode) == LOCAL_MODE:
        from llm_etl_provider.backends.local import LocalBackend

        return LocalBackend(
            local_dir,
            dag_id=dag_id,
            scope=scope or dag_id,
            run_id=run_id,
            log=log,
            plan=plan,
            run_deadline_seconds=run_deadline_seconds,
        )
    from llm_etl_provider.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(
        namespace,
        kubernetes_conn_id,
        dag_id=dag_id,
        run_id=run_id,
        log=log,
        key_secret=key_secret,
        work_claim_size=work_claim_size,
        work_storage_class=work_storage_class,
        scope=scope,
        run_deadline_seconds=run_deadline_seconds,
        plan=plan,
    )
