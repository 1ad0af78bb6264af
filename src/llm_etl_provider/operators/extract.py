"""ExtractResultsOperator: verify one shard's sealed frames and publish its results to object storage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from llm_etl_provider.exceptions import ExtractionError, FrameStreamRejectedError
from llm_etl_provider.pod.builder import LABEL_SHARD
from llm_etl_provider.run_resources import (
    KEY_FILE_NAME,
    checked_execution_mode,
    key_secret_name,
    local_run_dir,
    run_selector,
)
from llm_etl_provider.transport.errors import TransportError
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.keys import FrameKeyError, decode_key, load_key
from llm_etl_provider.transport.sources import file_lines, pod_log_lines

if TYPE_CHECKING:
    from airflow.sdk import Context


class ExtractResultsOperator(BaseOperator):
    """Read a shard's frames from its pod's log (or the local log), verify them all, and publish.

    Publishes ``results.jsonl``, ``dead_letter.jsonl``, ``manifest.json`` and ``_SUCCESS`` under
    ``<output_path>/shard-<index>/``, all or nothing (see ``llm_etl_provider.transport.extract``), and
    returns a small summary for XCom. A gap, a duplicate, an altered or foreign frame, a rotated log or a
    missing trailer fails the task with nothing published. The key is read from the run's Secret and never
    logged.

    :param output_path: the run's output folder, any ObjectStoragePath URI (templated)
    :param shard: the shard descriptor from StageInputOperator (templated)
    :param key_secret: the Secret holding the run's key (templated; default: StageInputOperator's)
    :param namespace: the run's namespace (templated)
    :param kubernetes_conn_id: the Kubernetes connection
    :param container: the container whose log holds the frames
    :param execution_mode: ``kubernetes`` or ``local``
    :param local_dir: local mode's staging folder (templated)
    """

    template_fields: Sequence[str] = ("output_path", "shard", "key_secret", "namespace", "local_dir")

    def __init__(
        self,
        *,
        output_path: str,
        shard: dict[str, Any] | str,
        key_secret: str | None = None,
        namespace: str = "default",
        kubernetes_conn_id: str = "kubernetes_default",
        container: str = "base",
        execution_mode: str = "kubernetes",
        local_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_path = output_path
        self.shard = shard
        self.key_secret = key_secret
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.container = container
        self.execution_mode = checked_execution_mode(execution_mode)
        self.local_dir = local_dir

    def execute(self, context: Context) -> dict[str, Any]:
        if not isinstance(self.shard, dict):
            raise TypeError(
                f"shard must be a StageInputOperator shard descriptor, not {type(self.shard).__name__}"
            )
        run_id, index = str(context["run_id"]), int(self.shard["index"])
        destination = ObjectStoragePath(self.output_path) / f"shard-{index:05d}"
        if self.execution_mode == "local":
            key, lines, source = self._local_source(run_id, index)
        else:
            key, lines, source = self._pod_source(run_id, index)
        try:
            manifest = extract(
                lines, key, destination, run_id=run_id, shard=index, source=source, progress=self.log.info
            )
        except TransportError as exc:
            raise FrameStreamRejectedError(f"shard {index}: nothing was published: {exc}") from None
        self.log.info(
            "shard %d: published %d results and %d dead letters to %s",
            index, manifest["results"], manifest["dead_letters"], destination,
        )  # fmt: skip
        return {
            "shard": index,
            "output": str(destination),
            "records": manifest["records"],
            "results": manifest["results"],
            "dead_letters": manifest["dead_letters"],
            "skipped_blank_lines": manifest["skipped_blank_lines"],
            "expected_records": self.shard.get("records"),
            "summary": {
                k: manifest["worker_summary"].get(k)
                for k in ("records_per_s", "latency_p50_s", "latency_p95_s")
            },
        }

    def _local_source(self, run_id: str, index: int) -> tuple[bytes, Iterator[bytes], str]:
        root = local_run_dir(self.local_dir, self.dag_id, run_id)
        log = root / f"shard-{index}" / "container.log"
        if not log.is_file():
            raise ExtractionError(f"shard {index}: no worker log at {log}: did the enrichment run?")
        try:
            key = load_key(root / "key")
        except FrameKeyError as exc:
            raise ExtractionError(str(exc)) from None
        return key, file_lines(log), f"file {log}"

    def _pod_source(self, run_id: str, index: int) -> tuple[bytes, Iterator[bytes], str]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
        from kubernetes.client.exceptions import ApiException

        api = KubernetesHook(conn_id=self.kubernetes_conn_id).core_v1_client
        key_secret = self.key_secret or key_secret_name(self.dag_id, run_id)
        try:
            secret = api.read_namespaced_secret(key_secret, self.namespace)
            key = decode_key(_secret_value(secret.data, KEY_FILE_NAME), f"Secret {key_secret}")
        except ApiException as exc:
            raise ExtractionError(
                f"cannot read the run's key Secret {key_secret}: HTTP {exc.status}"
            ) from None
        except FrameKeyError as exc:
            raise ExtractionError(str(exc)) from None
        selector = f"{run_selector(run_id)},{LABEL_SHARD}={index}"
        pods = [p for p in api.list_namespaced_pod(self.namespace, label_selector=selector).items]
        finished = [p for p in pods if p.status is not None and p.status.phase == "Succeeded"]
        if not finished:
            phases = (
                ", ".join(f"{p.metadata.name}={p.status.phase if p.status else '?'}" for p in pods) or "none"
            )
            raise ExtractionError(f"shard {index}: expected a succeeded pod, found {phases}")
        # Two pods succeed when a try fails after its pod ended (KPO keeps a finished pod) and the retry
        # enriches the shard again: each log holds the whole shard; the latest try is the one on record.
        latest = max(finished, key=_try_order)
        if len(finished) > 1:
            self.log.warning(
                "shard %d: %d pods succeeded (%s); reading the latest try's, %s",
                index, len(finished), ", ".join(p.metadata.name for p in finished), latest.metadata.name,
            )  # fmt: skip
        name = latest.metadata.name
        lines = pod_log_lines(name, self.namespace, container=self.container, core_api=api)
        return key, lines, f"pod {self.namespace}/{name} container {self.container}"


def _try_order(pod: Any) -> tuple[int, datetime]:
    """Order pods by KPO's ``try_number`` label, then by creation."""
    try_number = (pod.metadata.labels or {}).get("try_number", "")
    created = pod.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)
    return (int(try_number) if try_number.isdigit() else 0, created)


def _secret_value(data: dict[str, str] | None, key: str) -> bytes:
    import base64

    if not data or key not in data:
        raise FrameKeyError(f"the key Secret has no {key!r} entry")
    return base64.b64decode(data[key])
