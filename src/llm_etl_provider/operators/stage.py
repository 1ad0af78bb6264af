"""StageInputOperator: validate and shard the input, and hand each shard and the run's key to the pods."""

from __future__ import annotations

import bisect
import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.run_resources import (
    KEY_FILE_NAME,
    checked_execution_mode,
    key_secret_name,
    local_run_dir,
    run_prefix,
    secret_manifest,
    work_claim_manifest,
)
from llm_etl_provider.staging import (
    DEFAULT_RECORD_BYTES,
    DEFAULT_SHARD_BYTES,
    StagingInputError,
    check_sizes,
    plan_shards,
)
from llm_etl_provider.transport.keys import encode_key, new_key, write_key_file
from llm_etl_provider.worker.errors import ConfigurationError
from llm_etl_provider.worker.records import RecordReader, detect_format

if TYPE_CHECKING:
    from airflow.sdk import Context

FORMAT_PROBE_RECORDS = 100  # not one readable record among the first 100: the input is not what it claims


class StageInputOperator(BaseOperator):
    """Read the input from object storage, split it into Secret-sized shards, and stage them with a new key.

    In ``kubernetes`` mode each shard becomes an immutable Secret (key ``input.<format>.gz``) and the run's
    256-bit frame key another (key ``key``), all labelled with the run for cleanup and the sweeper. In
    ``local`` mode they are files under ``local_dir``. Returns the shard descriptors (index, Secret name,
    record count, line offset, format) to map the enrichment and the extraction over; the key's Secret is
    ``key_secret_name(dag_id, run_id)``.

    :param input_path: the input file: any ObjectStoragePath URI or local path (templated)
    :param input_format: ``jsonl``, ``csv`` or ``auto`` (from the name)
    :param namespace: where the Secrets go (templated)
    :param kubernetes_conn_id: the Kubernetes connection
    :param execution_mode: ``kubernetes`` or ``local``
    :param local_dir: where local mode stages its files (templated)
    :param max_shard_bytes: the compressed size limit of a shard (a Secret holds at most 1 MiB)
    :param max_record_bytes: records over this size are passed on cut, to be dead-lettered by the worker
    :param work_claim_size: e.g. ``1Gi``: give each shard a PersistentVolumeClaim for the worker's checkpoint
        and frame spool, so that a retry after a lost pod (a preempted node) resumes instead of starting over.
        The retry's pod then has to run where the volume can attach (its zone). None: an emptyDir.
    :param work_storage_class: the claims' StorageClass (default: the cluster's)
    """

    template_fields: Sequence[str] = (
        "input_path",
        "namespace",
        "local_dir",
        "max_shard_bytes",
        "max_record_bytes",
        "work_claim_size",
        "work_storage_class",
    )

    def __init__(
        self,
        *,
        input_path: str,
        input_format: str = "auto",
        namespace: str = "default",
        kubernetes_conn_id: str = "kubernetes_default",
        execution_mode: str = "kubernetes",
        local_dir: str | None = None,
        max_shard_bytes: int | str = DEFAULT_SHARD_BYTES,
        max_record_bytes: int | str = DEFAULT_RECORD_BYTES,
        work_claim_size: str | None = None,
        work_storage_class: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_path = input_path
        self.input_format = input_format
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.execution_mode = checked_execution_mode(execution_mode)
        self.local_dir = local_dir
        self.max_shard_bytes = max_shard_bytes
        self.max_record_bytes = max_record_bytes
        self.work_claim_size = work_claim_size or None
        self.work_storage_class = work_storage_class or None

    def execute(self, context: Context) -> list[dict[str, Any]]:
        run_id = str(context["run_id"])
        prefix = run_prefix(self.dag_id, run_id)
        try:
            check_sizes(int(self.max_shard_bytes), int(self.max_record_bytes))
        except StagingInputError as exc:
            raise StagingError(str(exc)) from None
        source = ObjectStoragePath(self.input_path)
        with tempfile.TemporaryDirectory(prefix="llm-etl-stage-") as scratch:
            local = Path(scratch) / (source.name or "input")
            try:
                with source.open("rb") as reader, local.open("wb") as writer:  # type: ignore[no-untyped-call]
                    shutil.copyfileobj(reader, writer, 1 << 20)
            except (OSError, ValueError) as exc:
                raise StagingError(f"cannot read the input {self.input_path}: {exc}") from None
            try:
                fmt = detect_format(local, self.input_format)
                malformed, duplicates = self._validate(local, fmt)
                shards = list(
                    plan_shards(
                        local,
                        input_format=fmt,
                        max_shard_bytes=int(self.max_shard_bytes),
                        max_record_bytes=int(self.max_record_bytes),
                    )
                )
            except (ConfigurationError, StagingInputError) as exc:
                raise StagingError(str(exc).replace(str(local), self.input_path)) from None
        records = sum(s.records for s in shards)
        key = new_key()
        repeated = _duplicates_by_shard(duplicates, shards)
        descriptors = [
            {
                "index": s.index,
                "secret": f"{prefix}-shard-{s.index}",
                "records": s.records,
                "line_offset": s.line_offset,
                "first_line": s.first_line,
                "input_format": s.input_format,
                "bytes": len(s.data),
                "malformed": malformed if s.index == 0 else {},
                # ids repeated across shards: each shard's worker dead-letters these lines as duplicate_id
                "duplicates": repeated[s.index],
            }
            for s in shards
        ]
        if self.execution_mode == "kubernetes":
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

            api = KubernetesHook(conn_id=self.kubernetes_conn_id).core_v1_client
            self._create_secrets(api, run_id, prefix, key, shards)
            if self.work_claim_size:
                self._create_work_claims(api, run_id, prefix, key, descriptors)
        else:
            self._write_local(run_id, key, shards, descriptors)
        self.log.info(
            "staged %d records of %s in %d shards (%d bytes compressed), run prefix %s",
            records, self.input_path, len(shards), sum(len(s.data) for s in shards), prefix,
        )  # fmt: skip
        return descriptors

    def _validate(self, local: Path, fmt: str) -> tuple[dict[str, list[int]], list[int]]:
        """Read the input as the worker will; fail on an unusable whole, report malformed records by line.

        Unusable: no record at all, or not one readable record among the first ones (a file that is not the
        declared format, or not text). Also returns the lines of every record whose id an earlier record has.
        """
        reader = RecordReader(local, input_format=fmt, max_record_bytes=int(self.max_record_bytes))
        malformed: dict[str, list[int]] = {}
        duplicates: list[int] = []
        readable = 0
        first_bad: tuple[int, str] | None = None
        for count, record in enumerate(reader, 1):
            if record.error is None:
                readable += 1
                continue
            first_bad = first_bad or (record.line, record.error)
            if record.error == "duplicate_id":
                duplicates.append(record.line)
            if not readable and count == FORMAT_PROBE_RECORDS:
                break
            lines = malformed.setdefault(record.error, [])
            if len(lines) < 20:
                lines.append(record.line)
        if not readable:
            if first_bad is None:
                blank = reader.stats.blank_lines
                raise StagingError(f"{self.input_path} is empty ({blank} blank lines): no record to enrich")
            line, reason = first_bad
            raise StagingError(
                f"{self.input_path} does not look like {fmt.upper()}: no readable record from line {line} "
                f"on ({reason} at line {line})"
            )
        for reason, lines in malformed.items():
            self.log.warning(
                "%s: records at lines %s%s are %s and will go to the dead letters",
                self.input_path, ", ".join(map(str, lines)), " and more" if len(lines) == 20 else "", reason,
            )  # fmt: skip
        return malformed, duplicates

    def _create_secrets(self, api: Any, run_id: str, prefix: str, key: bytes, shards: list[Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        manifests = [
            secret_manifest(
                key_secret_name(self.dag_id, run_id),
                run_id,
                {KEY_FILE_NAME: encode_key(key).encode()},
                kind="key",
            )
        ] + [
            secret_manifest(
                f"{prefix}-shard-{s.index}",
                run_id,
                {f"input.{s.input_format}.gz": s.data},
                kind="shard",
                shard=s.index,
            )
            for s in shards
        ]
        for manifest in manifests:
            name = manifest["metadata"]["name"]
            try:
                api.create_namespaced_secret(self.namespace, manifest)
            except ApiException as exc:
                if exc.status != 409:
                    raise StagingError(
                        f"cannot create Secret {self.namespace}/{name}: HTTP {exc.status}"
                    ) from None
                # A retried task: the Secrets are immutable, so replace them whole (new key, same shards).
                api.delete_namespaced_secret(name, self.namespace)
                api.create_namespaced_secret(self.namespace, manifest)

    def _create_work_claims(
        self, api: Any, run_id: str, prefix: str, key: bytes, descriptors: list[dict[str, Any]]
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        # Named after the key: a retried stage makes a new key, and a spool sealed with the old one is junk.
        key_id = hashlib.sha256(key).hexdigest()[:8]
        for descriptor in descriptors:
            name = f"{prefix}-shard-{descriptor['index']}-work-{key_id}"
            manifest = work_claim_manifest(
                name, run_id, descriptor["index"], str(self.work_claim_size), self.work_storage_class
            )
            try:
                api.create_namespaced_persistent_volume_claim(self.namespace, manifest)
            except ApiException as exc:
                raise StagingError(
                    f"cannot create the work claim {self.namespace}/{name}: HTTP {exc.status}"
                ) from None
            descriptor["work_claim"] = name

    def _write_local(
        self, run_id: str, key: bytes, shards: list[Any], descriptors: list[dict[str, Any]]
    ) -> None:
        if not self.local_dir:
            raise StagingError("local mode needs local_dir")
        root = local_run_dir(self.local_dir, self.dag_id, run_id)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, mode=0o700)
        write_key_file(root / "key", key)
        for shard, descriptor in zip(shards, descriptors, strict=True):
            path = root / f"shard-{shard.index}" / f"input.{shard.input_format}.gz"
            path.parent.mkdir(mode=0o700)
            path.write_bytes(shard.data)
            descriptor["path"] = str(path)


def _duplicates_by_shard(lines: list[int], shards: list[Any]) -> list[list[int]]:
    """Group input lines by the shard that holds them (shards are contiguous, in input order)."""
    starts = [shard.first_line for shard in shards]
    grouped: list[list[int]] = [[] for _ in shards]
    for line in lines:
        grouped[bisect.bisect_right(starts, line) - 1].append(line)
    return grouped
