"""StageInputOperator: validate and shard the input, and hand each shard and the run's key to the pods."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow.sdk import ObjectStoragePath

from llm_etl_provider.backends import RunBackend
from llm_etl_provider.backends.urls import sign_transport
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.codes import DeadLetterReason
from llm_etl_provider.contract.duplicates import encode_line_numbers
from llm_etl_provider.contract.invocation import DEFAULT_MAX_RECORD_BYTES, OBJECT_OUTPUT, default_of
from llm_etl_provider.contract.layout import DEFAULT_RUN_DEADLINE_SECONDS, plan_id, shard_folder
from llm_etl_provider.contract.object_transport import (
    DEFAULT_TRANSPORT,
    TRANSPORT_FOLDER,
    TRANSPORTS,
    InputRange,
    part_records_for,
    parts_needed,
)
from llm_etl_provider.contract.shard import ShardDescriptor, validate_run_id
from llm_etl_provider.exceptions import PodSpecError, StagingError, StagingInputError
from llm_etl_provider.formats.exceptions import InputError
from llm_etl_provider.formats.records import InputLimits, RecordReader, detect_format
from llm_etl_provider.formats.tokenizer import begins_gzip
from llm_etl_provider.hooks.object_store import ObjectStoreSigner, expiry_seconds, signer_for, url_egress
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.pod.builder import quantity_bytes
from llm_etl_provider.staging import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_INPUT_RECORDS,
    DEFAULT_MAX_SHARDS,
    DEFAULT_MAX_STAGED_BYTES,
    DEFAULT_SHARD_BYTES,
    ByteRange,
    Shard,
    check_sizes,
    plan_ranges,
    plan_shards,
)
from llm_etl_provider.transport.extract import remove_tree
from llm_etl_provider.transport.run_manifest import unpublish_run

if TYPE_CHECKING:
    from airflow.sdk import Context

FORMAT_PROBE_RECORDS = 100  # not one readable record among the first 100: the input is not what it claims


class StageInputOperator(RunStepOperator):
    """Read the input from object storage, split it into Secret-sized shards, and stage them with a key.

    The plan (:func:`~llm_etl_provider.contract.layout.plan_id`) is the input's sha256 and the settings that
    cut it, for this run of this pipeline. The stage is idempotent per plan: run again (Airflow clears a
    shard's setup with it), it keeps the plan's key and whatever of the plan is still staged, stages what is
    missing, and returns the same descriptors, so that no shard's work, running or ended, is invalidated. A
    new key is made only where the plan's key is gone (the run's cleanup ran), after removing what the lost
    key had sealed. Another input under the same run id makes another plan, named apart. A stage that fails
    after making the plan's key removes what it staged. The run's ``_SUCCESS`` and manifest are removed
    first: an execution must not be vouched for by an earlier one's.

    In ``kubernetes`` mode each shard becomes an immutable Secret (key ``input.<format>.gz``) and the plan's
    256-bit frame key another (key ``key``), all labelled with the run and the plan for cleanup and the
    sweeper. In ``local`` mode they are files under ``local_dir``. Returns the shard descriptors
    (:class:`~llm_etl_provider.contract.shard.ShardDescriptor`, as dicts, naming the plan and its key) to map
    the enrichment and the extraction over. A run id that frames cannot carry fails the task before anything
    is staged.

    :param input_path: the input file: any ObjectStoragePath URI or local path (templated)
    :param input_format: ``jsonl``, ``csv`` or ``auto`` (from the name)
    and the run's ``namespace``, ``kubernetes_conn_id``, ``execution_mode`` and ``local_dir``
    (:class:`~llm_etl_provider.operators.base.RunStepOperator`)
    :param max_shard_bytes: the compressed size limit of a shard (a Secret holds at most 1 MiB)
    :param max_record_bytes: records over this size are passed on cut, to be dead-lettered by the worker
    :param max_input_bytes: refuse an input over this many bytes, decompressed (default 16 GiB)
    :param max_input_records: refuse an input of more records (default 50 million). Blank lines are capped
        too: 10,000, then 10 per record read so far (a gzip bomb of newlines is refused in milliseconds).
        Each cap fails the task before anything is staged.
    :param max_shards: refuse an input that makes more shards (default 1,000: Airflow maps a task per shard,
        and refuses mappings over its ``max_map_length``, 1,024 by default)
    :param max_staged_bytes: refuse an input whose shards add up to more compressed bytes (default 512 MiB:
        they are Secrets in etcd); both are counted in a first pass, before anything is created
    :param work_claim_size: e.g. ``1Gi``: give each shard a PersistentVolumeClaim for the worker's checkpoint
        and frame spool, so that a retry after a lost pod (a preempted node) resumes instead of starting over.
        The retry's pod then has to run where the volume can attach (its zone). None: an emptyDir.
    :param work_storage_class: the claims' StorageClass (default: the cluster's)
    :param run_deadline_seconds: how long the run's resources may live once Airflow does not know the run
        (another deployment's, a deleted run): the sweeper's deadline; a run Airflow counts as running is
        never swept (default 7 days). With the object transport, also how long the pods' pre-signed URLs
        live (at most 7 days, what a signature allows)
    :param transport: ``log`` (default): shards in Secrets, frames in the pods' logs, no egress; ``object``:
        nothing of the input in Kubernetes: each shard's Secret holds pre-signed URLs for its byte range of
        the input and its part objects (:mod:`~llm_etl_provider.contract.object_transport`). The input must be
        uncompressed, and it and ``output_path`` on ``s3://`` or ``gs://``.
    :param pods: the object transport's shard count (a pod, and so a GPU and a model load, each): the input
        is cut into that many line-aligned byte ranges of about equal size. The log transport cuts
        Secret-sized shards instead (``max_shard_bytes``).
    :param output_path: the pipeline's output folder (templated): the run publishes under
        ``<output_path>/<dag>/<group>/<run>/`` (:meth:`~RunStepOperator.run_output`), whose ``_SUCCESS``
        the stage removes first; the object transport's parts go under its ``_transport/<plan>/`` folder,
        which the cleanup removes
    :param store_cidrs: the object transport: the address ranges (CIDRs) the pods may reach the store at,
        for a store whose addresses rotate (AWS S3's published ranges, a VPC endpoint); default: its URLs'
        hosts as resolved by the stage
    :param checkpoint_every: records between the worker's checkpoints; with the object transport each writes
        a part object (raised so that a shard needs at most 500 parts)
    :param worker_memory: the workers' memory limit (templated; a quantity, default ``1Gi``): a shard with
        more records than it can index (:func:`~llm_etl_provider.contract.layout.worker_memory_needed`) is
        refused before anything is staged, naming the limit it needs, rather than killed by the kernel on
        every try
    :param plan_settings: what else the shards' results depend on (the model, the task, its prompt and
        schema ...; templated): part of the plan, so that a run executed again with other settings publishes
        nothing of the earlier execution's
    """

    template_fields: Sequence[str] = (
        "input_path",
        "namespace",
        "local_dir",
        "max_shard_bytes",
        "max_record_bytes",
        "max_input_bytes",
        "max_input_records",
        "max_shards",
        "max_staged_bytes",
        "work_claim_size",
        "work_storage_class",
        "transport",
        "pods",
        "output_path",
        "plan_settings",
        "worker_memory",
    )

    def __init__(
        self,
        *,
        input_path: str,
        input_format: str = "auto",
        max_shard_bytes: int | str = DEFAULT_SHARD_BYTES,
        max_record_bytes: int | str = DEFAULT_MAX_RECORD_BYTES,
        max_input_bytes: int | str = DEFAULT_MAX_INPUT_BYTES,
        max_input_records: int | str = DEFAULT_MAX_INPUT_RECORDS,
        max_shards: int | str = DEFAULT_MAX_SHARDS,
        max_staged_bytes: int | str = DEFAULT_MAX_STAGED_BYTES,
        work_claim_size: str | None = None,
        work_storage_class: str | None = None,
        run_deadline_seconds: int = DEFAULT_RUN_DEADLINE_SECONDS,
        transport: str = DEFAULT_TRANSPORT,
        pods: int | str | None = None,
        output_path: str | None = None,
        checkpoint_every: int = default_of("checkpoint_every"),
        store_cidrs: Sequence[str] | None = None,
        plan_settings: dict[str, Any] | None = None,
        worker_memory: str = layout.DEFAULT_WORKER_MEMORY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.plan_settings = plan_settings or {}
        self.worker_memory = worker_memory
        self.input_path = input_path
        self.input_format = input_format
        self.max_shard_bytes = max_shard_bytes
        self.max_record_bytes = max_record_bytes
        self.max_input_bytes = max_input_bytes
        self.max_input_records = max_input_records
        self.max_shards = max_shards
        self.max_staged_bytes = max_staged_bytes
        self.work_claim_size = work_claim_size or None
        self.work_storage_class = work_storage_class or None
        self.run_deadline_seconds = run_deadline_seconds
        self.transport = transport
        self.pods = pods
        self.output_path = output_path
        self.checkpoint_every = checkpoint_every
        self.store_cidrs = store_cidrs

    def execute(self, context: Context) -> list[dict[str, Any]]:
        run_id = str(context["run_id"])
        try:
            validate_run_id(run_id)  # the worker binds it into every frame: refuse it before anything exists
            check_sizes(int(self.max_shard_bytes), int(self.max_record_bytes))
        except (ValueError, StagingInputError) as exc:
            raise StagingError(str(exc)) from None
        if self.transport not in TRANSPORTS:
            raise StagingError(f"transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}")
        try:  # every shard is checked against it: a bad value fails before the input is read
            memory_limit = quantity_bytes(str(self.worker_memory), "worker_memory")
        except PodSpecError as exc:
            raise StagingError(str(exc)) from None
        # the object transport signs URLs for the input and the output: a store that cannot fails first
        signers = self._signers() if self.transport == OBJECT_OUTPUT else None
        output = self.run_output(context) if self.output_path else None
        if output is not None:
            # this execution publishes the run again: the run's earlier _SUCCESS must not vouch for it
            unpublish_run(output)
        source = ObjectStoragePath(self.input_path)
        limits = InputLimits(max_bytes=int(self.max_input_bytes), max_records=int(self.max_input_records))
        # The stage reads the input twice (validation, then sharding) from a copy that has no name on local
        # disk: the kernel frees it when the process ends, a SIGKILL included; nothing is left behind.
        try:
            fmt = detect_format(Path(self.input_path), self.input_format)
        except InputError as exc:
            raise StagingError(str(exc)) from None
        with tempfile.TemporaryFile(prefix="llm-etl-stage-") as copy:
            input_sha256 = self._copy(source, copy, limits.max_bytes)
            plan = plan_id(self.run_scope, run_id, input_sha256, self._plan_settings(fmt))
            backend = backend_for(
                self,
                context,
                plan=plan,
                work_claim_size=self.work_claim_size,
                work_storage_class=self.work_storage_class,
                run_deadline_seconds=self.run_deadline_seconds,
            )
            local = _reopenable(copy)
            try:
                if signers is not None:
                    assert output is not None  # _signers refused a run without an output path
                    descriptors = self._stage_ranges(
                        backend, local, fmt, limits, signers, plan, output, memory_limit
                    )
                else:
                    malformed, duplicates, _ = self._validate(local, fmt, limits)
                    cut = functools.partial(
                        plan_shards,
                        local,
                        input_format=fmt,
                        max_shard_bytes=int(self.max_shard_bytes),
                        max_record_bytes=int(self.max_record_bytes),
                    )
                    self._check_run_size(cut(), memory_limit)
                    descriptors = self._stage(backend, cut(), malformed, duplicates, plan)
            except (InputError, StagingInputError) as exc:
                raise StagingError(str(exc).replace(str(local), self.input_path)) from None
        self.log.info("plan %s: input sha256 %s", plan, input_sha256)
        return self._report(descriptors, layout.plan_prefix(self.run_scope, run_id, plan))

    def _plan_settings(self, fmt: str) -> dict[str, Any]:
        """What cuts and stages the input, beside its content: another value makes another plan."""
        return {
            "input": self.input_path,
            "format": fmt,
            "transport": self.transport,
            "max_shard_bytes": int(self.max_shard_bytes),
            "max_record_bytes": int(self.max_record_bytes),
            "pods": self.pods if self.transport == OBJECT_OUTPUT else None,
            "checkpoint_every": int(self.checkpoint_every),
            "output": self.output_path,
            "work_claim": [self.work_claim_size, self.work_storage_class],
            "store_cidrs": sorted(self.store_cidrs or ()),
            "enrichment": self.plan_settings,
        }

    @contextlib.contextmanager
    def _plan_key(self, backend: RunBackend) -> Iterator[tuple[bytes, bool]]:
        """The plan's key (kept if staged before) while the plan is staged; a stage that fails after making
        it removes what it staged, so that no shard of patient data outlives a failed stage."""
        key, fresh = backend.open_plan()
        try:
            yield key, fresh
        except BaseException:
            if fresh:
                backend.remove_plan()
            raise

    def _report(self, descriptors: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
        self.log.info(
            "staged %d records of %s in %d shards (%d bytes, transport %s), run prefix %s",
            sum(d["records"] for d in descriptors), self.input_path, len(descriptors),
            sum(d["bytes"] for d in descriptors), self.transport, prefix,
        )  # fmt: skip
        return descriptors

    def _signers(self) -> tuple[ObjectStoreSigner, ObjectStoreSigner]:
        if not self.output_path:
            raise StagingError(
                "the object transport writes its parts under output_path: give it to the stage"
            )
        return signer_for(ObjectStoragePath(self.input_path)), signer_for(ObjectStoragePath(self.output_path))

    def _stage_ranges(
        self,
        backend: RunBackend,
        local: Path,
        fmt: str,
        limits: InputLimits,
        signers: tuple[ObjectStoreSigner, ObjectStoreSigner],
        plan: str,
        output: ObjectStoragePath,
        memory_limit: int,
    ) -> list[dict[str, Any]]:
        """The object transport: a byte range of the input per pod, and each shard's pre-signed URLs, under
        the plan's transport folder (``<run output>/_transport/<plan>/``)."""
        with local.open("rb") as handle:
            if begins_gzip(handle):
                raise StagingError(
                    f"{self.input_path} is gzip-compressed: the object transport reads byte ranges of the "
                    "input, which a gzip stream has not; store it uncompressed, or use transport=log"
                )
        try:
            pods = int(self.pods or 1)
        except ValueError:
            raise StagingError(f"pods must be a whole number, not {self.pods!r}") from None
        if not 1 <= pods <= int(self.max_shards):
            raise StagingError(f"pods must be between 1 and max_shards ({self.max_shards}), not {pods}")
        ranges = plan_ranges(local, input_format=fmt, pods=pods, max_record_bytes=int(self.max_record_bytes))
        malformed, duplicates, records = self._validate(
            local, fmt, limits, boundaries=[r.first_line for r in ranges[1:]]
        )
        ranges, records = _without_empty_ranges(ranges, records)
        for index, count in enumerate(records):
            self._check_worker_memory(index, count, memory_limit)
        plan_folder = output / TRANSPORT_FOLDER / plan
        expires = expiry_seconds(self.run_deadline_seconds)
        with self._plan_key(backend) as (_, fresh):
            if fresh:  # parts and checkpoints a lost key sealed cannot be read: the plan starts afresh
                remove_tree(plan_folder)
            return self._stage_range_shards(
                backend, local, ranges, records, malformed=malformed, duplicates=duplicates, fmt=fmt,
                plan=plan, plan_folder=plan_folder, signers=signers,
                expires=expires,
            )  # fmt: skip

    def _stage_range_shards(
        self,
        backend: RunBackend,
        local: Path,
        ranges: list[ByteRange],
        records: list[int],
        *,
        malformed: dict[str, list[int]],
        duplicates: list[int],
        fmt: str,
        plan: str,
        plan_folder: ObjectStoragePath,
        signers: tuple[ObjectStoreSigner, ObjectStoreSigner],
        expires: int,
    ) -> list[dict[str, Any]]:
        """Each range's shard: its URLs (parts, checkpoint, end marker) and where its pod may connect."""
        egress: list[tuple[str, int]] | None = None
        descriptors = []
        for byte_range, count in zip(ranges, records, strict=True):
            folder = plan_folder / shard_folder(byte_range.index)

            part_records = part_records_for(count, int(self.checkpoint_every))
            document = sign_transport(
                InputRange(
                    url="",
                    start=byte_range.start,
                    end=byte_range.end,
                    sha256=_range_sha256(local, byte_range),
                    prefix=byte_range.prefix,
                ),
                parts_needed(count, part_records),
                part_records,
                source=str(self.input_path),
                parts=str(folder),
                expires=expires,
                signers=signers,
            )
            if egress is None:  # the hosts every pod's URLs name, resolved once (or the deployment's CIDRs)
                cidrs = list(self.store_cidrs or ())
                egress = sorted(
                    {*url_egress(document.input.url, cidrs), *url_egress(document.end_put, cidrs)}
                )
            end = ranges[byte_range.index + 1].first_line if byte_range.index + 1 < len(ranges) else None
            descriptors.append(
                _descriptor(
                    byte_range, count, end, fmt=fmt, plan=plan, malformed=malformed, duplicates=duplicates,
                    stage=functools.partial(backend.stage_object_shard, byte_range.index, document.to_json()),
                    bytes=document.input.size,
                    input_sha256=document.input.sha256,
                    transport=OBJECT_OUTPUT,
                    parts=str(folder),
                    source=str(self.input_path),
                    egress=[[address, port] for address, port in egress],
                )
            )  # fmt: skip
        return descriptors

    def _check_run_size(self, shards: Iterable[Shard], memory_limit: int) -> None:
        """Count what the run would stage, before anything is: etcd holds every shard's Secret, and Airflow
        maps a task per shard."""
        staged = 0
        for count, shard in enumerate(shards, 1):
            self._check_worker_memory(shard.index, shard.records, memory_limit)
            staged += len(shard.data)
            if count > int(self.max_shards) or staged > int(self.max_staged_bytes):
                raise StagingError(
                    f"{self.input_path} would stage more than {self.max_shards} shards or "
                    f"{self.max_staged_bytes} bytes (max_shards, max_staged_bytes): split the input into "
                    "several runs, or raise the caps if the cluster's etcd can hold it"
                )

    def _check_worker_memory(self, index: int, records: int, limit: int) -> None:
        """Refuse a shard whose worker the memory ``limit`` (bytes) cannot hold (its id index grows with its
        records)."""
        needed = -(-layout.worker_memory_needed(records) // (1 << 20))  # MiB
        if needed << 20 > limit:
            raise StagingError(
                f"shard {index} holds {records} records, whose worker needs about {needed}Mi of memory, over "
                f"worker_memory {self.worker_memory}: raise worker_memory, or use more pods"
            )

    def _copy(self, source: ObjectStoragePath, copy: BinaryIO, max_bytes: int) -> str:
        """Copy the input as it is (compressed or not), refusing one over ``max_bytes``; return its sha256."""
        copied = 0
        digest = hashlib.sha256()
        try:
            with source.open("rb") as reader:  # type: ignore[no-untyped-call]
                while chunk := reader.read(1 << 20):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise StagingError(
                            f"{self.input_path}: the input is over max_input_bytes ({max_bytes})"
                        )
                    copy.write(chunk)
                    digest.update(chunk)
        except (OSError, ValueError) as exc:
            raise StagingError(f"cannot read the input {self.input_path}: {exc}") from None
        copy.flush()
        return digest.hexdigest()

    def _stage(
        self,
        backend: RunBackend,
        shards: Iterable[Shard],
        malformed: dict[str, list[int]],
        duplicates: list[int],
        plan: str,
    ) -> list[dict[str, Any]]:
        """Stage the plan's key (or keep it), then each shard as it is cut: the stage holds two shards, not
        the whole input.

        The first pass (:meth:`_check_run_size`) has cut every shard already, so an input the sharding
        refuses (a CSV header it cannot repeat, a CSV line it would have to cut) fails before anything is
        staged.
        """
        with self._plan_key(backend):
            return [
                self._stage_one(backend, shard, next_shard, malformed, duplicates, plan)
                for shard, next_shard in _with_next(shards)
            ]

    def _stage_one(
        self,
        backend: RunBackend,
        shard: Shard,
        next_shard: Shard | None,
        malformed: dict[str, list[int]],
        duplicates: list[int],
        plan: str,
    ) -> dict[str, Any]:
        """One shard's descriptor, once it is staged."""
        return _descriptor(
            shard, shard.records, next_shard.first_line if next_shard else None,
            fmt=shard.input_format, plan=plan, malformed=malformed, duplicates=duplicates,
            stage=functools.partial(backend.stage_shard, shard),
            bytes=len(shard.data),
            input_sha256=hashlib.sha256(shard.data).hexdigest(),
        )  # fmt: skip

    def _validate(
        self, local: Path, fmt: str, limits: InputLimits, boundaries: Sequence[int] = ()
    ) -> tuple[dict[str, list[int]], list[int], list[int]]:
        """Read the input as the worker will; fail on an unusable whole, report malformed records by line.

        Unusable: no record at all, or not one readable record among the first ones (a file that is not the
        declared format, or not text). Also returns the lines of every record whose id an earlier record has,
        and the records before, between and after the sorted input lines ``boundaries``.
        """
        records = [0] * (len(boundaries) + 1)
        reader = RecordReader(
            local, input_format=fmt, max_record_bytes=int(self.max_record_bytes), limits=limits
        )
        malformed: dict[str, list[int]] = {}
        duplicates: list[int] = []
        readable = 0
        first_bad: tuple[int, str] | None = None
        for count, record in enumerate(reader, 1):
            records[bisect.bisect_right(boundaries, record.line)] += 1
            if record.error is None:
                readable += 1
                continue
            first_bad = first_bad or (record.line, record.error)
            if record.error == DeadLetterReason.DUPLICATE_ID:
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
        return malformed, duplicates, records


def _without_empty_ranges(ranges: list[ByteRange], records: list[int]) -> tuple[list[ByteRange], list[int]]:
    """Join each range without a record (blank lines; a CSV header's range) to its neighbour: a pod and a
    model load for nothing helps no one."""
    joined: list[tuple[ByteRange, int]] = []
    for byte_range, count in zip(ranges, records, strict=True):
        if joined and (count == 0 or joined[-1][1] == 0):
            previous, before = joined[-1]
            joined[-1] = (dataclasses.replace(previous, end=byte_range.end), before + count)
        else:
            joined.append((byte_range, count))
    renumbered = [
        dataclasses.replace(byte_range, index=index) for index, (byte_range, _) in enumerate(joined)
    ]
    return renumbered, [count for _, count in joined]


def _range_sha256(local: Path, byte_range: ByteRange) -> str:
    """The digest of what the range's worker reads: its prefix, then its bytes of the input."""
    digest = hashlib.sha256(byte_range.prefix)
    with local.open("rb") as handle:
        handle.seek(byte_range.start)
        remaining = byte_range.end - byte_range.start
        while remaining and (chunk := handle.read(min(1 << 20, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def _reopenable(copy: BinaryIO) -> Path:
    """A path that opens the nameless file ``copy`` again, with an offset of its own (Linux's /proc)."""
    path = Path(f"/proc/self/fd/{copy.fileno()}")
    if not path.exists():
        raise StagingError("the stage needs Linux's /proc to read its nameless copy of the input")
    return path


def _with_next(shards: Iterable[Shard]) -> Iterator[tuple[Shard, Shard | None]]:
    """Pair each shard with the one after it (None for the last), cutting one shard ahead."""
    iterator = iter(shards)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following
        current = following


def _descriptor(
    unit: Shard | ByteRange,
    records: int,
    end: int | None,
    *,
    fmt: str,
    plan: str,
    malformed: dict[str, list[int]],
    duplicates: list[int],
    stage: Callable[[bytes], dict[str, Any]],
    **transported: Any,
) -> dict[str, Any]:
    """The descriptor of a shard that holds the input lines from its first up to ``end`` (the next shard's
    first; None: to the last), once ``stage`` staged it: ``stage`` is given the shard's lines whose id an
    earlier shard holds (its worker dead-letters them as duplicate_id) and returns where it staged the shard.
    What the transport adds of its own (size, digest, URLs) comes as ``transported``."""
    repeated = duplicates[_lines_within(duplicates, unit.first_line, end)]
    return ShardDescriptor(
        index=unit.index,
        records=records,
        line_offset=unit.line_offset,
        input_format=fmt,
        first_line=unit.first_line,
        malformed=malformed if unit.index == 0 else {},  # shard 0 reports the input's
        duplicates=len(repeated),
        plan=plan,
        **transported,
        **stage(encode_line_numbers(repeated) if repeated else b""),
    ).to_xcom()


def _lines_within(lines: list[int], first: int, end: int | None) -> slice:
    """The part of the sorted ``lines`` from ``first`` up to ``end`` (excluded; None: to the last)."""
    return slice(
        bisect.bisect_left(lines, first), len(lines) if end is None else bisect.bisect_left(lines, end)
    )
