"""StageInputOperator: validate and shard the input, and hand each shard and the run's key to the pods."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    Shard,
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
                shards = plan_shards(
                    local,
                    input_format=fmt,
                    max_shard_bytes=int(self.max_shard_bytes),
                    max_record_bytes=int(self.max_record_bytes),
                )
                descriptors = self._stage(run_id, prefix, shards, malformed, duplicates)
            except (ConfigurationError, StagingInputError) as exc:
                raise StagingError(str(exc).replace(str(local), self.input_path)) from None
        self.log.info(
            "staged %d records of %s in %d shards (%d bytes compressed), run prefix %s",
            sum(d["records"] for d in descriptors), self.input_path, len(descriptors),
            sum(d["bytes"] for d in descriptors), prefix,
        )  # fmt: skip
        return descriptors

    def _stage(
        self,
        run_id: str,
        prefix: str,
        shards: Iterable[Shard],
        malformed: dict[str, list[int]],
        duplicates: list[int],
    ) -> list[dict[str, Any]]:
        """Stage a new key, then each shard as it is cut: the stage holds two shards, not the whole input.

        The first two shards are cut before anything is staged, so that an input the sharding refuses (a CSV
        header it cannot repeat, a CSV line it would have to cut) leaves nothing behind in most cases.
        """
        pairs = _with_next(shards)
        first = next(pairs, None)
        stage_shard = self._stage_key(run_id, prefix, new_key())
        descriptors = []
        for shard, next_shard in itertools.chain([first] if first else [], pairs):
            # a shard holds the input lines from its first line to the next shard's
            end = next_shard.first_line if next_shard else None
            descriptor: dict[str, Any] = {
                "index": shard.index,
                "secret": f"{prefix}-shard-{shard.index}",
                "records": shard.records,
                "line_offset": shard.line_offset,
                "first_line": shard.first_line,
                "input_format": shard.input_format,
                "bytes": len(shard.data),
                "malformed": malformed if shard.index == 0 else {},
                # ids repeated across shards: each shard's worker dead-letters these lines as duplicate_id
                "duplicates": duplicates[_lines_within(duplicates, shard.first_line, end)],
            }
            stage_shard(shard, descriptor)
            descriptors.append(descriptor)
        return descriptors

    def _stage_key(self, run_id: str, prefix: str, key: bytes) -> Callable[[Shard, dict[str, Any]], None]:
        """Stage the run's key where its pods (or local runs) read it; return what stages each shard there.

        A shard goes to a Secret (and gets a work claim when asked) in ``kubernetes`` mode, to a file under
        the run's folder in ``local`` mode; either adds where it went to the shard's descriptor.
        """
        if self.execution_mode == "local":
            root = self._local_root(run_id, key)

            def write_file(shard: Shard, descriptor: dict[str, Any]) -> None:
                path = root / f"shard-{shard.index}" / f"input.{shard.input_format}.gz"
                path.parent.mkdir(mode=0o700)
                path.write_bytes(shard.data)
                descriptor["path"] = str(path)

            return write_file

        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        api = KubernetesHook(conn_id=self.kubernetes_conn_id).core_v1_client
        key_data = {KEY_FILE_NAME: encode_key(key).encode()}
        self._create_secret(
            api, secret_manifest(key_secret_name(self.dag_id, run_id), run_id, key_data, kind="key")
        )

        def create_secret(shard: Shard, descriptor: dict[str, Any]) -> None:
            shard_data = {f"input.{shard.input_format}.gz": shard.data}
            self._create_secret(
                api,
                secret_manifest(descriptor["secret"], run_id, shard_data, kind="shard", shard=shard.index),
            )
            if self.work_claim_size:
                descriptor["work_claim"] = self._create_work_claim(api, run_id, prefix, key, shard.index)

        return create_secret

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

    def _create_secret(self, api: Any, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

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

    def _create_work_claim(self, api: Any, run_id: str, prefix: str, key: bytes, index: int) -> str:
        from kubernetes.client.exceptions import ApiException

        # Named after the key: a retried stage makes a new key, and a spool sealed with the old one is junk.
        name = f"{prefix}-shard-{index}-work-{hashlib.sha256(key).hexdigest()[:8]}"
        manifest = work_claim_manifest(
            name, run_id, index, str(self.work_claim_size), self.work_storage_class
        )
        try:
            api.create_namespaced_persistent_volume_claim(self.namespace, manifest)
        except ApiException as exc:
            raise StagingError(
                f"cannot create the work claim {self.namespace}/{name}: HTTP {exc.status}"
            ) from None
        return name

    def _local_root(self, run_id: str, key: bytes) -> Path:
        """The run's local staging folder, made anew with the key in it."""
        if not self.local_dir:
            raise StagingError("local mode needs local_dir")
        root = local_run_dir(self.local_dir, self.dag_id, run_id)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, mode=0o700)
        write_key_file(root / "key", key)
        return root


def _with_next(shards: Iterable[Shard]) -> Iterator[tuple[Shard, Shard | None]]:
    """Pair each shard with the one after it (None for the last), cutting one shard ahead."""
    iterator = iter(shards)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following
        current = following


def _lines_within(lines: list[int], first: int, end: int | None) -> slice:
    """The part of the sorted ``lines`` from ``first`` up to ``end`` (excluded; None: to the last)."""
    return slice(
        bisect.bisect_left(lines, first), len(lines) if end is None else bisect.bisect_left(lines, end)
    )
