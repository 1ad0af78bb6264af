"""ExtractResultsOperator: verify one shard's sealed frames and publish its results to object storage."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from llm_etl_provider.contract.answers import settings_schema
from llm_etl_provider.contract.invocation import OBJECT_OUTPUT, is_unset
from llm_etl_provider.contract.layout import published_folder
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import ExtractionError, FrameStreamRejectedError, ShardFailedError
from llm_etl_provider.formats.parquet import OutputTypeError, PartitionError
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.transport.exceptions import TransportError
from llm_etl_provider.transport.extract import FAILED, JSONL_OUTPUT, OUTPUT_FORMATS, PARQUET_OUTPUT, extract
from llm_etl_provider.transport.run_manifest import unpublish_run
from llm_etl_provider.transport.sources import object_part_lines

if TYPE_CHECKING:
    from airflow.sdk import Context


class ExtractResultsOperator(RunStepOperator):
    """Read a shard's frames from its pod's log (or the local log), verify them all, and publish.

    Publishes ``results.jsonl``, ``dead_letter.jsonl``, ``manifest.json`` (naming the stage's plan) and
    ``_SUCCESS`` under ``<run output>/shard-<index>/`` (:meth:`~RunStepOperator.run_output`), all or nothing
    (see ``llm_etl_provider.transport.extract``), withdrawing the run's ``_SUCCESS`` first, and
    returns a small summary for XCom. A shard whose worker went over its dead-letter threshold is published
    without ``_SUCCESS``, its manifest saying it failed, and the task fails without a retry. A gap, a
    duplicate, an altered or foreign frame, a rotated log, a missing trailer or a record count other than the
    stage's fails the task with nothing published. The key is read from the run's Secret and never logged.

    :param output_path: the pipeline's output folder, any ObjectStoragePath URI (templated)
    :param shard: the shard descriptor from StageInputOperator (templated)
    :param key_secret: the Secret holding the run's key (templated; default: the one the shard names)
    :param output_format: ``jsonl`` or ``parquet`` (templated): ``results.parquet`` and
        ``dead_letter.parquet`` in place of the JSONL files, the enrichment and its meta as typed structs,
        the carried input fields as columns of their own (the ``parquet`` extra)
    :param partition_by: with ``output_format="parquet"``, the results as a Hive-partitioned folder,
        ``results/<column>=<value>/part-<n>.parquet``, by a carried input column (its output name),
        ``task``, or ``enrichment.<field>`` (templated; unset: one file)
    :param task_settings: the shard's worker settings that shape its answers (``task``, ``categories``,
        ``entity_types``, ``schema``; templated): a Parquet output's enrichment is typed from the task's JSON
        schema, the same in every shard. None (or a custom schema given as a file's path) types it from
        the shard's values
    and the run's ``namespace``, ``kubernetes_conn_id``, ``execution_mode`` and ``local_dir``
    (:class:`~llm_etl_provider.operators.base.RunStepOperator`)
    """

    template_fields: Sequence[str] = (
        "output_path", "shard", "key_secret", "namespace", "local_dir", "output_format", "partition_by",
        "task_settings",
    )  # fmt: skip

    def __init__(
        self,
        *,
        output_path: str,
        shard: dict[str, Any] | str,
        key_secret: str | None = None,
        output_format: str = JSONL_OUTPUT,
        partition_by: str | None = None,
        task_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_path = output_path
        self.shard = shard
        self.key_secret = key_secret
        self.output_format = output_format
        self.task_settings = task_settings
        self.partition_by = partition_by

    def execute(self, context: Context) -> dict[str, Any]:
        if self.output_format not in OUTPUT_FORMATS:  # a retry would meet it again
            raise AirflowFailException(
                f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, not {self.output_format!r}"
            )
        partition_by = None if is_unset(self.partition_by) else str(self.partition_by).strip()
        if partition_by is not None and self.output_format != PARQUET_OUTPUT:
            raise AirflowFailException(
                f"partition_by {partition_by!r} needs output_format={PARQUET_OUTPUT!r}: JSON lines are one "
                "file a shard"
            )
        shard = ShardDescriptor.from_xcom(self.shard)
        run_id = str(context["run_id"])
        run_output = self.run_output(context)
        destination = run_output / published_folder(shard.index, shard.golden)
        # the key, and the try whose pod (or local log) ended last; its log holds the frames unless the
        # object transport wrote them as parts, where the stage signed them for
        backend = backend_for(self, context, key_secret=self.key_secret or shard.key_secret, plan=shard.plan)
        source = backend.frame_source(shard.index)
        if shard.transport == OBJECT_OUTPUT:
            if not shard.parts:
                raise ExtractionError(f"shard {shard.index}: an object transport shard without its parts")
            parts = ObjectStoragePath(shard.parts)
            source = dataclasses.replace(
                source, lines=object_part_lines(parts), description=f"{parts} ({source.description})"
            )
        try:
            manifest = extract(
                source.lines,
                source.key,
                destination,
                run_id=run_id,
                shard=shard.index,
                expected_records=shard.records,
                expected_input_sha256=shard.input_sha256,
                expected_attempt=source.attempt,
                plan=shard.plan,
                source=source.description,
                progress=self.log.info,
                # the run's _SUCCESS and manifest vouched for the shard's earlier output
                before_publish=lambda: unpublish_run(run_output),
                output_format=self.output_format,
                enrichment_schema=(
                    settings_schema(self.task_settings) if self.task_settings is not None else None
                ),
                carried_columns=shard.carried_columns,
                # the golden set is measured, not loaded: its results stay one file
                partition_by=None if shard.golden else partition_by,
            )
        except TransportError as exc:
            raise FrameStreamRejectedError(f"shard {shard.index}: nothing was published: {exc}") from None
        except (PartitionError, OutputTypeError) as exc:  # the same results would meet it again: no retry
            raise AirflowFailException(f"shard {shard.index}: nothing was published: {exc}") from None
        finally:
            # a stream refused part way holds its HTTP response open: closed now, not whenever the garbage
            # collector meets the failed task's traceback (which may free the socket first)
            if isinstance(source.lines, Generator):
                source.lines.close()
        self.log.info(
            "shard %d: published %d results and %d dead letters to %s",
            shard.index, manifest["results"], manifest["dead_letters"], destination,
        )  # fmt: skip
        if manifest["state"] == FAILED:
            # published for inspection, without _SUCCESS; the same stream would fail again: no retry
            raise ShardFailedError(f"shard {shard.index} failed: {manifest['failure']}")
        return {
            "shard": shard.index,
            "output": str(destination),
            "records": manifest["records"],
            "results": manifest["results"],
            "dead_letters": manifest["dead_letters"],
            "skipped_blank_lines": manifest["skipped_blank_lines"],
            "expected_records": shard.records,  # checked: the stream holds as many
            "summary": {
                k: manifest["worker_summary"].get(k)
                for k in ("records_per_s", "latency_p50_s", "latency_p95_s")
            },
        }
