"""The object transport's staging: nothing of the input in Kubernetes. Each shard is a line-aligned byte range
of the input (:func:`~llm_etl_provider.staging.cutting.plan_ranges`), whose pod reads it from the store and
writes its parts there, through pre-signed URLs (:mod:`llm_etl_provider.contract.object_transport`) staged
with the plan's key; each pod may connect to the store's addresses only."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_etl_provider.backends.urls import sign_transport
from llm_etl_provider.contract.invocation import OBJECT_OUTPUT
from llm_etl_provider.contract.layout import shard_folder
from llm_etl_provider.contract.object_transport import InputRange, part_records_for, parts_needed
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.formats.parquet import plan_row_groups
from llm_etl_provider.formats.tokenizer import begins_gzip
from llm_etl_provider.hooks.object_store import ObjectStoreSigner, url_egress
from llm_etl_provider.staging.cutting import ByteRange
from llm_etl_provider.staging.plan import WorkerMemory, plan_key, shard_descriptor
from llm_etl_provider.transport.extract import remove_tree

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from llm_etl_provider.backends import RunBackend
    from llm_etl_provider.staging.reuse import ReusedResults
    from llm_etl_provider.staging.validation import Validation


def check_uncompressed(local: Path, name: str) -> None:
    """Refuse a gzip-compressed input, whose byte ranges no pod could read; ``name`` is how the message
    names it."""
    with local.open("rb") as handle:
        if begins_gzip(handle):
            raise StagingError(
                f"{name} is gzip-compressed: the object transport reads byte ranges of the "
                "input, which a gzip stream has not; store it uncompressed, or use transport=log"
            )


def parquet_ranges(local: Path, rows: Path, pods: int) -> list[ByteRange]:
    """The ranges of the Parquet file ``local`` for at most ``pods`` pods: runs of whole row groups of about
    equal rows, each read with the file's footer; ``rows`` is the file as JSON lines (row n on line n),
    which sizes what each range's worker writes."""
    runs, tail = plan_row_groups(local, pods)
    size = local.stat().st_size
    expanded = [0] * len(runs)
    with rows.open("rb") as lines:
        run = 0
        for number, line in enumerate(lines, 1):
            while run + 1 < len(runs) and number >= runs[run + 1].first_row:
                run += 1
            expanded[run] += len(line)
    return [
        ByteRange(
            index=index,
            start=run.start,
            end=run.end,
            first_line=run.first_row,
            row_groups=run.groups,
            tail=tail,
            object_size=size,
            expanded=expanded[index],
        )
        for index, run in enumerate(runs)
    ]


def stage_ranges(
    backend: RunBackend,
    local: Path,
    ranges: list[ByteRange],
    validation: Validation,
    *,
    source: str,
    input_format: str,
    plan: str,
    plan_folder: ObjectStoragePath,
    signers: tuple[ObjectStoreSigner, ObjectStoreSigner],
    expires: int,
    checkpoint_every: int,
    store_cidrs: Sequence[str],
    memory: WorkerMemory,
    reused: ReusedResults | None = None,
) -> list[dict[str, Any]]:
    """Stage a shard per byte range of ``local`` (the copy of the input object ``source``), with its
    pre-signed URLs under the plan's transport folder ``plan_folder`` (``<run output>/_transport/<plan>/``),
    each valid for ``expires`` seconds; return the shards' descriptors, as dicts.

    ``validation`` is the input's read with the ranges' first lines as boundaries. A range without a record
    joins its neighbour, and every shard is held to the workers' ``memory`` before anything is staged. A
    fresh plan key starts the plan's folder afresh. The pods may connect to ``store_cidrs``, or else to the
    URLs' hosts as resolved now.
    """
    ranges, records = without_empty_ranges(ranges, validation.records)
    for index, count in enumerate(records):
        memory.check(index, count)
    with plan_key(backend) as (_, fresh):
        if fresh:  # parts and checkpoints a lost key sealed cannot be read: the plan starts afresh
            remove_tree(plan_folder)
        return _stage_range_shards(
            backend, local, ranges, records, malformed=validation.malformed,
            duplicates=validation.duplicates, fmt=input_format, plan=plan, plan_folder=plan_folder,
            signers=signers, expires=expires, source=source, checkpoint_every=checkpoint_every,
            store_cidrs=store_cidrs, reused=reused,
        )  # fmt: skip


def _stage_range_shards(
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
    source: str,
    checkpoint_every: int,
    store_cidrs: Sequence[str],
    reused: ReusedResults | None,
) -> list[dict[str, Any]]:
    """Each range's shard: its URLs (parts, checkpoint, end marker) and where its pod may connect."""
    egress: list[tuple[str, int]] | None = None
    descriptors = []
    for byte_range, count in zip(ranges, records, strict=True):
        folder = plan_folder / shard_folder(byte_range.index)

        part_records = part_records_for(count, checkpoint_every)
        document = sign_transport(
            InputRange(
                url="",
                start=byte_range.start,
                end=byte_range.end,
                sha256=_range_sha256(local, byte_range),
                prefix=byte_range.prefix,
                row_groups=byte_range.row_groups,
                tail=byte_range.tail,
                object_size=byte_range.object_size,
            ),
            parts_needed(count, part_records),
            part_records,
            source=source,
            parts=str(folder),
            expires=expires,
            signers=signers,
        )
        if egress is None:  # the hosts every pod's URLs name, resolved once (or the deployment's CIDRs)
            cidrs = list(store_cidrs)
            egress = sorted({*url_egress(document.input.url, cidrs), *url_egress(document.end_put, cidrs)})
        end = ranges[byte_range.index + 1].first_line if byte_range.index + 1 < len(ranges) else None
        descriptor = shard_descriptor(
            byte_range, count, end, fmt=fmt, plan=plan, malformed=malformed, duplicates=duplicates,
            reused=reused,
            stage=functools.partial(backend.stage_object_shard, byte_range.index, document.to_json()),
            bytes=document.input.size + byte_range.expanded,  # the worker's disk: its download, its rows
            input_sha256=document.input.sha256,
            transport=OBJECT_OUTPUT,
            part_records=part_records,
            parts=str(folder),
            source=source,
            egress=[[address, port] for address, port in egress],
        )  # fmt: skip
        descriptors.append(descriptor)
    return descriptors


def without_empty_ranges(ranges: list[ByteRange], records: list[int]) -> tuple[list[ByteRange], list[int]]:
    """Join each range without a record (blank lines; a CSV header's range) to its neighbour: a pod and a
    model load for nothing helps no one."""
    joined: list[tuple[ByteRange, int]] = []
    for byte_range, count in zip(ranges, records, strict=True):
        if joined and (count == 0 or joined[-1][1] == 0):
            previous, before = joined[-1]
            groups = (
                (previous.row_groups[0], byte_range.row_groups[1])
                if previous.row_groups is not None and byte_range.row_groups is not None
                else None
            )
            joined[-1] = (
                dataclasses.replace(
                    previous,
                    end=byte_range.end,
                    row_groups=groups,
                    expanded=previous.expanded + byte_range.expanded,
                ),
                before + count,
            )
        else:
            joined.append((byte_range, count))
    renumbered = [
        dataclasses.replace(byte_range, index=index) for index, (byte_range, _) in enumerate(joined)
    ]
    return renumbered, [count for _, count in joined]


def _range_sha256(local: Path, byte_range: ByteRange) -> str:
    """The digest of what the range's worker reads: its prefix, then its bytes of the input (then a
    Parquet file's footer)."""
    digest = hashlib.sha256(byte_range.prefix)
    spans = [(byte_range.start, byte_range.end)]
    if byte_range.tail is not None and byte_range.object_size is not None:
        spans.append((byte_range.tail, byte_range.object_size))
    with local.open("rb") as handle:
        for start, end in spans:
            handle.seek(start)
            remaining = end - start
            while remaining and (chunk := handle.read(min(1 << 20, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()
