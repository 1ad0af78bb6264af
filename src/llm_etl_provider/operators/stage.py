"""StageInputOperator: validate and shard the input, and hand each shard and the run's key to the pods."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from llm_etl_provider.backends import LOCAL_MODE, RunBackend
from llm_etl_provider.backends.urls import signers_for
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import (
    AUTO_FORMAT,
    DEFAULT_MAX_RECORD_BYTES,
    LINE_IDS,
    OBJECT_OUTPUT,
    WORKER_SETTINGS,
    coerce_settings,
    default_of,
    is_unset,
    unmet_task_needs,
)
from llm_etl_provider.contract.layout import DEFAULT_RUN_DEADLINE_SECONDS, plan_id
from llm_etl_provider.contract.object_transport import DEFAULT_TRANSPORT, TRANSPORT_FOLDER, TRANSPORTS
from llm_etl_provider.contract.shard import validate_run_id
from llm_etl_provider.exceptions import PodSpecError, StagingError, StagingInputError
from llm_etl_provider.formats.exceptions import InputError, UnreadableInput
from llm_etl_provider.formats.parquet import carried_columns, kinds_as_columns
from llm_etl_provider.formats.records import InputLimits, RecordReader
from llm_etl_provider.hooks.object_store import ObjectStoreSigner, expiry_seconds
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.pod.builder import quantity_bytes
from llm_etl_provider.staging.cutting import (
    DEFAULT_LOCAL_SHARD_BYTES,
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_INPUT_RECORDS,
    DEFAULT_MAX_SHARDS,
    DEFAULT_MAX_STAGED_BYTES,
    DEFAULT_SHARD_BYTES,
    LOCAL_COMPRESSION,
    LOCAL_SHARD_LIMIT,
    SECRET_COMPRESSION,
    SECRET_LIMIT,
    check_sizes,
    plan_ranges,
    plan_shards,
)
from llm_etl_provider.staging.input_copy import LocalInput, local_input
from llm_etl_provider.staging.log_transport import check_run_size, stage_shards
from llm_etl_provider.staging.object_transport import check_uncompressed, parquet_ranges, stage_ranges
from llm_etl_provider.staging.plan import WorkerMemory
from llm_etl_provider.staging.reuse import ReusedResults, reused_results
from llm_etl_provider.staging.validation import FORMAT_PROBE_RECORDS, Validation, validate_input
from llm_etl_provider.transport.run_manifest import unpublish_run

if TYPE_CHECKING:
    from airflow.sdk import Context


class StageInputOperator(RunStepOperator):
    """Read the input from object storage, split it into Secret-sized shards, and stage them with a key.

    The operator parses its settings and calls the stage's jobs in :mod:`llm_etl_provider.staging` (the
    input's copy, its validation, each transport's staging), naming the input in their errors.

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
    :param input_format: ``jsonl``, ``csv``, ``parquet`` or ``auto`` (from the name: ``.parquet`` and ``.pq``
        are Parquet, whose rows are staged as JSON lines, row ``n`` on line ``n``; the object transport's
        ranges of a Parquet input are runs of whole row groups)
    :param id_field: the field that identifies a record, as the worker is told (templated): the stage finds
        repeated ids by it, and refuses an input whose first records all lack it
    and the run's ``namespace``, ``kubernetes_conn_id``, ``execution_mode`` and ``local_dir``
    (:class:`~llm_etl_provider.operators.base.RunStepOperator`)
    :param max_shard_bytes: the compressed size limit of a shard (templated): in Kubernetes at most 1 MiB,
        what a Secret holds (default 700,000); in local execution, where a shard is a file, at most 1 GiB
        (default 32 MiB: fewer worker starts)
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
    :param previous_output: an earlier run's output folder (``<output>/<dag>/<group>/<run>``, JSONL or
        Parquet; templated): an incremental run. A record whose earlier result is there is staged with it,
        and its worker publishes that result in place of a request where the record's content (the record,
        the prompts, the schema, the model and its digest, the sampling) is unchanged
        (:mod:`~llm_etl_provider.contract.reuse`); the manifests count them as reused
    :param golden_path: a golden set (templated): a file of records whose ``golden_label_field`` holds their
        known label (JSONL, CSV or Parquet, by its name), staged beside the input as shards of their own
        (``golden``, after the input's), enriched alike and published apart (``golden-<index>``): the run's
        quality gate measures the model on it (:class:`PublishRunOperator`'s ``min_quality``)
    :param golden_label_field: the golden records' label field: the worker's ``label_field``, which copies
        each record's label into its result (required with ``golden_path``; templated)
    :param plan_settings: what else the shards' results depend on (the model, the task, its prompt and
        schema ...; templated): part of the plan, so that a run executed again with other settings publishes
        nothing of the earlier execution's
    """

    template_fields: Sequence[str] = (
        "input_path",
        "id_field",
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
        "checkpoint_every",
        "previous_output",
        "golden_path",
        "golden_label_field",
    )

    def __init__(
        self,
        *,
        input_path: str,
        input_format: str = default_of("input_format"),
        id_field: str = default_of("id_field"),
        max_shard_bytes: int | str | None = None,
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
        previous_output: str | None = None,
        golden_path: str | None = None,
        golden_label_field: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.previous_output = previous_output
        self.golden_path = golden_path
        self.golden_label_field = golden_label_field
        self.plan_settings = plan_settings or {}
        self.worker_memory = worker_memory
        self.input_path = input_path
        self.input_format = input_format
        self.id_field = id_field
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
        self._ids_by_input: dict[Path, str] = {}  # each input's record ids: _record_ids
        run_id = str(context["run_id"])
        try:
            validate_run_id(run_id)  # the worker binds it into every frame: refuse it before anything exists
            check_sizes(self.shard_bytes, int(self.max_record_bytes), limit=self.shard_limit)
            # a task its settings cannot make (tags without categories) fails here, not in every shard's pod
            worker = {k: v for k, v in self.plan_settings.items() if k in WORKER_SETTINGS}
            if (unmet := unmet_task_needs(coerce_settings(worker))) is not None:
                raise ValueError(unmet)
        except (ValueError, StagingInputError) as exc:
            raise StagingError(str(exc)) from None
        if self.transport not in TRANSPORTS:
            raise StagingError(f"transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}")
        try:  # every shard is checked against it: a bad value fails before the input is read
            memory = WorkerMemory(
                str(self.worker_memory), quantity_bytes(str(self.worker_memory), "worker_memory")
            )
        except PodSpecError as exc:
            raise StagingError(str(exc)) from None
        # the object transport signs URLs for the input and the output: a store that cannot fails first
        signers = self._signers() if self.transport == OBJECT_OUTPUT else None
        output = self.run_output(context) if self.output_path else None
        if output is not None:
            # this execution publishes the run again: the run's earlier _SUCCESS must not vouch for it
            unpublish_run(output)
        limits = InputLimits(max_bytes=int(self.max_input_bytes), max_records=int(self.max_input_records))
        # read twice (validation, then sharding) from a local copy that leaves nothing behind; Parquet's
        # rows as JSON lines, row n on line n
        with contextlib.ExitStack() as inputs:
            try:
                local = inputs.enter_context(
                    local_input(self.input_path, self.input_format, max_bytes=limits.max_bytes)
                )
                golden = (
                    inputs.enter_context(local_input(self.golden, AUTO_FORMAT, max_bytes=limits.max_bytes))
                    if self.golden
                    else None
                )
            except InputError as exc:
                raise StagingError(str(exc)) from None
            settings = self._plan_settings(local.declared, golden.sha256 if golden else None)
            plan = plan_id(self.run_scope, run_id, local.sha256, settings)
            backend = backend_for(
                self,
                context,
                plan=plan,
                work_claim_size=self.work_claim_size,
                work_storage_class=self.work_storage_class,
                run_deadline_seconds=self.run_deadline_seconds,
            )
            fmt = local.format
            try:
                with self._reused(local.path, fmt, limits) as reused:
                    if signers is not None:
                        assert output is not None  # _signers refused a run without an output path
                        descriptors = self._stage_ranges(
                            backend, local, limits, signers, plan, output, memory, reused
                        )
                    else:
                        descriptors = self._stage_shards(backend, local, limits, plan, memory, reused)
            except (InputError, StagingInputError) as exc:
                raise StagingError(str(exc).replace(str(local.path), self.input_path)) from None
            if golden is not None:
                descriptors += self._stage_golden(backend, golden, limits, plan, memory, len(descriptors))
        self.log.info("plan %s: input sha256 %s", plan, local.sha256)
        return self._report(descriptors, layout.plan_prefix(self.run_scope, run_id, plan))

    def _plan_settings(self, fmt: str, golden_sha256: str | None = None) -> dict[str, Any]:
        """What cuts and stages the input, beside its content: another value makes another plan."""
        return {
            "golden": [self.golden, golden_sha256],
            "input": self.input_path,
            "format": fmt,
            "transport": self.transport,
            "max_shard_bytes": self.shard_bytes,
            "max_record_bytes": int(self.max_record_bytes),
            "pods": self.pods if self.transport == OBJECT_OUTPUT else None,
            "checkpoint_every": int(self.checkpoint_every),
            "output": self.output_path,
            "work_claim": [self.work_claim_size, self.work_storage_class],
            "store_cidrs": sorted(self.store_cidrs or ()),
            "enrichment": self.plan_settings,
            "previous_output": self.earlier_output,
        }

    def _described(
        self,
        descriptors: list[dict[str, Any]],
        source: LocalInput,
        limits: InputLimits,
        validation: Validation,
    ) -> list[dict[str, Any]]:
        """The descriptors of ``source``'s shards with what holds for all of them: whether their records are
        named by their line (:meth:`_record_ids`), and the types of the input columns their results carry:
        a Parquet input's own, or those of the values over the whole input (its ``validation``), so that
        every shard's output gives them the same columns."""
        line_ids = self._record_ids(source.path, source.format, limits) == LINE_IDS
        columns = None
        if source.parquet is not None:
            try:
                columns = carried_columns(source.parquet, self.carry)
            except UnreadableInput as exc:
                raise StagingError(f"{self.input_path}: {exc}") from None
        elif validation.carried is not None:
            columns = kinds_as_columns(validation.carried)
        return [
            {**descriptor, "carried_columns": columns, "line_ids": line_ids} for descriptor in descriptors
        ]

    @property
    def carry(self) -> tuple[str, ...] | None:
        """The worker's ``carry_fields``: the input fields its results carry."""
        carry: tuple[str, ...] | None = coerce_settings(
            {"carry_fields": self.plan_settings.get("carry_fields")}
        )["carry_fields"]
        return carry

    def _record_ids(self, path: Path, fmt: str, limits: InputLimits) -> str:
        """The field that names the records of the input at ``path``: ``id_field``, the worker's; or, where
        it is the default and not one of the first records has it (an input without ids, a warehouse
        table's), their input line (:data:`LINE_IDS`), said in the log. A field named otherwise must be
        there: a misspelt one fails the validation rather than naming records by their line."""
        id_field = str(coerce_settings({"id_field": self.id_field})["id_field"])
        if id_field != default_of("id_field"):
            return id_field
        known = self._ids_by_input.get(path)
        if known is not None:
            return known
        # read as records named by their line: an id of the wrong type (a float from pandas) is there, and
        # the validation refuses it by name rather than naming records by their line
        reader = RecordReader(path, input_format=fmt, id_field=LINE_IDS, limits=limits)
        probed = [record.fields for record in itertools.islice(reader, FORMAT_PROBE_RECORDS)]
        readable = [fields for fields in probed if fields is not None]
        if readable and not any(id_field in fields for fields in readable):
            self.log.warning(
                "%s: no record among the first %d has the id field %r: each record is named by its input "
                "line (set id_field to name them by a field of their own)",
                path.name if path.name != "rows.jsonl" else self.input_path, len(probed), id_field,
            )  # fmt: skip
            id_field = LINE_IDS
        self._ids_by_input[path] = id_field
        return id_field

    @property
    def shard_limit(self) -> int:
        """The largest shard: what a Secret holds, or a local file."""
        return LOCAL_SHARD_LIMIT if self.execution_mode == LOCAL_MODE else SECRET_LIMIT

    @property
    def shard_compression(self) -> int:
        """gzip's level for a shard: a Secret's size counts, a local file's write does."""
        return LOCAL_COMPRESSION if self.execution_mode == LOCAL_MODE else SECRET_COMPRESSION

    @property
    def shard_bytes(self) -> int:
        """``max_shard_bytes``, or the execution mode's default where unset."""
        if is_unset(self.max_shard_bytes):
            return DEFAULT_LOCAL_SHARD_BYTES if self.execution_mode == LOCAL_MODE else DEFAULT_SHARD_BYTES
        try:
            return int(str(self.max_shard_bytes))
        except ValueError:
            raise StagingError(
                f"max_shard_bytes must be a whole number, not {self.max_shard_bytes!r}"
            ) from None

    @property
    def golden(self) -> str | None:
        """The golden set's path, or None (unset, or an empty Param)."""
        return None if is_unset(self.golden_path) else str(self.golden_path).strip()

    def _stage_golden(
        self,
        backend: RunBackend,
        golden: LocalInput,
        limits: InputLimits,
        plan: str,
        memory: WorkerMemory,
        first_index: int,
    ) -> list[dict[str, Any]]:
        """The golden set's shards, numbered after the input's, marked ``golden``."""
        name = str(self.golden)
        label = None if is_unset(self.golden_label_field) else str(self.golden_label_field)
        if label is None:
            raise StagingError(
                f"the golden set {name} needs label_field: the field holding each golden record's known label"
            )
        validation = self._validate(golden, limits, name=name)
        id_field = self._record_ids(golden.path, golden.format, limits)
        reader = RecordReader(golden.path, input_format=golden.format, id_field=id_field, limits=limits)
        if not any(r.fields is not None and r.fields.get(label) is not None for r in reader):
            raise StagingError(f"no record of the golden set {name} has a label in its field {label!r}")
        cut = plan_shards(
            golden.path, input_format=golden.format, max_shard_bytes=self.shard_bytes, limit=self.shard_limit,
            level=self.shard_compression,
            max_record_bytes=int(self.max_record_bytes),
        )  # fmt: skip
        shards = (dataclasses.replace(shard, index=shard.index + first_index) for shard in cut)
        try:
            staged = stage_shards(
                backend, shards, validation.malformed, validation.duplicates, plan, golden=True
            )
        except (InputError, StagingInputError) as exc:
            raise StagingError(str(exc).replace(str(golden.path), name)) from None
        return self._described(staged, golden, limits, validation)

    @property
    def earlier_output(self) -> str | None:
        """The earlier output an incremental run reuses, or None (unset, or an empty Param)."""
        return None if is_unset(self.previous_output) else str(self.previous_output).strip()

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
        return signers_for(self.input_path, self.output_path)

    def _reused(
        self, local: Path, fmt: str, limits: InputLimits
    ) -> contextlib.AbstractContextManager[ReusedResults | None]:
        """The earlier results of the input's records (an incremental run), or None."""
        if self.earlier_output is None:
            return contextlib.nullcontext()
        return reused_results(
            self.earlier_output, local, input_format=fmt, id_field=self._record_ids(local, fmt, limits),
            max_record_bytes=int(self.max_record_bytes), limits=limits,
        )  # fmt: skip

    def _stage_shards(
        self,
        backend: RunBackend,
        source: LocalInput,
        limits: InputLimits,
        plan: str,
        memory: WorkerMemory,
        reused: ReusedResults | None,
    ) -> list[dict[str, Any]]:
        """The log transport: Secret-sized shards, cut twice: counted against the caps, then staged."""
        validation = self._validate(source, limits)
        cut = functools.partial(
            plan_shards,
            source.path,
            input_format=source.format,
            max_shard_bytes=self.shard_bytes,
            limit=self.shard_limit,
            level=self.shard_compression,
            max_record_bytes=int(self.max_record_bytes),
        )
        check_run_size(
            cut(),
            max_shards=int(self.max_shards),
            max_staged_bytes=int(self.max_staged_bytes),
            memory=memory,
            name=self.input_path,
        )
        self._report_reused(reused)
        staged = stage_shards(backend, cut(), validation.malformed, validation.duplicates, plan, reused)
        return self._described(staged, source, limits, validation)

    def _stage_ranges(
        self,
        backend: RunBackend,
        source: LocalInput,
        limits: InputLimits,
        signers: tuple[ObjectStoreSigner, ObjectStoreSigner],
        plan: str,
        output: ObjectStoragePath,
        memory: WorkerMemory,
        reused: ReusedResults | None,
    ) -> list[dict[str, Any]]:
        """The object transport: a byte range of the input per pod, and each shard's pre-signed URLs, under
        the plan's transport folder (``<run output>/_transport/<plan>/``). A Parquet input's ranges are runs
        of whole row groups (:func:`~llm_etl_provider.formats.parquet.plan_row_groups`)."""
        local, fmt = source.path, source.format
        try:
            pods = int(self.pods or 1)
        except ValueError:
            raise StagingError(f"pods must be a whole number, not {self.pods!r}") from None
        if not 1 <= pods <= int(self.max_shards):
            raise StagingError(f"pods must be between 1 and max_shards ({self.max_shards}), not {pods}")
        if source.parquet is not None:
            ranges = parquet_ranges(source.parquet, source.path, pods)
            local = source.parquet  # what the pods read: the file's bytes, digested by range
        else:
            check_uncompressed(local, self.input_path)
            ranges = plan_ranges(
                local, input_format=fmt, pods=pods, max_record_bytes=int(self.max_record_bytes)
            )
        validation = self._validate(source, limits, boundaries=[r.first_line for r in ranges[1:]])
        self._report_reused(reused)
        staged = stage_ranges(
            backend, local, ranges, validation, source=str(self.input_path), input_format=fmt, plan=plan,
            plan_folder=output / TRANSPORT_FOLDER / plan, signers=signers,
            expires=expiry_seconds(self.run_deadline_seconds), checkpoint_every=int(self.checkpoint_every),
            store_cidrs=self.store_cidrs or (), memory=memory, reused=reused,
        )  # fmt: skip
        return self._described(staged, source, limits, validation)

    def _report_reused(self, reused: ReusedResults | None) -> None:
        if reused is not None:
            self.log.info(
                "incremental run: %d of the input's records have one of the %d results of %s; each is "
                "published again where its content is unchanged, the rest go to the model",
                reused.found, reused.earlier, self.earlier_output,
            )  # fmt: skip

    def _validate(
        self,
        source: LocalInput,
        limits: InputLimits,
        boundaries: Sequence[int] = (),
        name: str | None = None,
    ) -> Validation:
        return validate_input(
            source.path,
            input_format=source.format,
            # the worker's, so that both find the same records malformed and the same ids repeated
            id_field=self._record_ids(source.path, source.format, limits),
            max_record_bytes=int(self.max_record_bytes),
            limits=limits,
            name=name or self.input_path,
            log=self.log,
            boundaries=boundaries,
            # the carried fields' kinds, where the input has no column types of its own (_described)
            carry=self.carry if source.parquet is None else None,
        )
