"""Extraction: verify a frame stream and publish its results to object storage, all or nothing.

The stream is read once, in constant memory: frames are checked and opened as they come and their lines are
written to ``results.jsonl`` and ``dead_letter.jsonl`` under a temporary prefix. Only when the trailer
has confirmed every count and the checksum are the files moved into place, followed by ``manifest.json``
and, last, ``_SUCCESS``, which a shard whose worker went over its dead-letter threshold does not get (its
manifest says ``"state": "failed"`` and why: its results and dead letters are published for inspection).
Any failure removes the temporary prefix: a reader that waits for ``_SUCCESS`` never sees a partial output.
Extracting the same stream again leaves the published output as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import IO, Any

from upath import UPath

from llm_etl_provider.contract.provenance import PROVENANCE
from llm_etl_provider.contract.reuse import REUSED
from llm_etl_provider.formats.digests import sha256_file
from llm_etl_provider.transport.exceptions import TrailerMismatchError
from llm_etl_provider.transport.frames import TRAILER_ATTEMPT, FrameReader

RESULTS = "results.jsonl"
DEAD_LETTERS = "dead_letter.jsonl"
JSONL_OUTPUT, PARQUET_OUTPUT = "jsonl", "parquet"
OUTPUT_FORMATS = (JSONL_OUTPUT, PARQUET_OUTPUT)
# the published files of each output format: results, dead letters
OUTPUT_FILES = {
    JSONL_OUTPUT: (RESULTS, DEAD_LETTERS),
    PARQUET_OUTPUT: ("results.parquet", "dead_letter.parquet"),
}
# a partitioned Parquet output's results: results/<column>=<value>/part-<n>.parquet
PARTITIONED_RESULTS = "results"
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
MANIFEST_FORMAT = "llm-etl-manifest/1"
SUCCEEDED = "succeeded"  # a shard's (and a run's) state in its manifest
FAILED = "failed"
STAGING_PREFIX = "_tmp-"  # where an extraction writes before it publishes: _tmp-<unix time>-<uuid>
DEFAULT_THREADS = 1 if (os.cpu_count() or 1) > 1 else 0


@dataclass
class _OutputFile:
    handle: IO[bytes]
    digest: Any = field(default_factory=hashlib.sha256)
    lines: int = 0
    size: int = 0

    def write(self, lines: bytes, count: int) -> None:
        """Append ``count`` newline-terminated lines."""
        if lines:
            self.handle.write(lines)
            self.digest.update(lines)
            self.lines += count
            self.size += len(lines)

    def describe(self) -> dict[str, Any]:
        return {"lines": self.lines, "bytes": self.size, "sha256": self.digest.hexdigest()}


def as_upath(location: str | PathLike[str] | Any) -> Any:
    """Accept a URI, a local path, or a storage path object: a UPath, or Airflow's ObjectStoragePath, which
    proxies one and carries its connection's credentials (so it must not be rebuilt from its string)."""
    if hasattr(location, "fs") and hasattr(location, "open"):
        return location
    return UPath(location)


def extract(
    lines: Iterable[bytes],
    key: bytes,
    output: str | PathLike[str] | Any,
    *,
    run_id: str | None = None,
    shard: int | None = None,
    expected_records: int | None = None,
    expected_input_sha256: str | None = None,
    expected_attempt: int | None = None,
    plan: str | None = None,
    source: str = "",
    progress: Callable[[str], None] | None = None,
    progress_every: float = 10.0,
    threads: int = DEFAULT_THREADS,
    before_publish: Callable[[], None] | None = None,
    output_format: str = JSONL_OUTPUT,
    enrichment_schema: dict[str, Any] | None = None,
    carried_columns: str | None = None,
    partition_by: str | None = None,
) -> dict[str, Any]:
    """Verify the frame stream in ``lines`` and publish it under ``output``; return the manifest.

    :param lines: the log, line by line (frames and other lines, timestamps allowed)
    :param key: the run's key
    :param output: the folder to publish into: a local path or any fsspec URI (``s3://``, ``memory://`` ...)
    :param run_id: the run the frames must belong to; None takes the stream's own
    :param shard: the shard the frames must belong to; None takes the stream's own
    :param expected_records: the records the stage counted in the shard; a stream holding another number is
        not this shard's (None: not checked)
    :param expected_input_sha256: the sha256 of the shard's staged input; a stream whose worker read another
        input (its trailer's ``input_sha256``) is not this shard's (None: not checked)
    :param expected_attempt: the try whose pod (or local log) the stream was read from; a stream sealed by
        another try (replayed, or left by an earlier pod) is refused (None: not checked)
    :param plan: the stage's plan the shard belongs to, written into the manifest: the run's publishing
        counts only outputs of its plan
    :param source: where the stream came from, for the manifest (no record content)
    :param progress: receives a progress line (counts and rates) every ``progress_every`` seconds
    :param threads: threads that open (decrypt, decompress) frames beside the reading and writing
    :param before_publish: called once the stream is verified, before the published output changes (not when
        the same stream was published already): e.g. to withdraw the run's ``_SUCCESS``
    :param output_format: ``jsonl`` (the verified lines as they are) or ``parquet`` (written from them once
        verified: :func:`~llm_etl_provider.formats.parquet.write_parquet`)
    :param enrichment_schema: the JSON schema of the shard's enrichment (the task's,
        :func:`~llm_etl_provider.contract.answers.published_schema`), which types a Parquet output's
        ``enrichment``; None types it from the values
    :param carried_columns: the Arrow types of the carried input columns (the stage's, from a Parquet
        input: :func:`~llm_etl_provider.formats.parquet.carried_columns`); None types them from the values
    :param partition_by: a Parquet output's results as a Hive-partitioned folder,
        ``results/<column>=<value>/`` (:func:`~llm_etl_provider.formats.parquet.write_partitioned`), by a
        result column or an enrichment field (``enrichment.<field>``); the dead letters stay one file
    :raises TransportError: the stream cannot be trusted; nothing was published
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
    if partition_by is not None and output_format != PARQUET_OUTPUT:
        raise ValueError(
            f"partition_by needs output_format={PARQUET_OUTPUT}: JSON lines are one file a shard"
        )
    destination = as_upath(output)
    destination.mkdir(parents=True, exist_ok=True)
    # An extraction killed before its cleanup (SIGKILL, a lost worker) left decrypted results behind; the
    # shard's folder has one writer at a time (its extract task's tries), so any staging found is stale.
    for stale in destination.glob(f"{STAGING_PREFIX}*"):
        remove_tree(stale)
    staging = destination / f"{STAGING_PREFIX}{int(time.time())}-{uuid.uuid4().hex}"
    staging.mkdir(parents=True, exist_ok=True)
    reader = FrameReader(key, run_id=run_id, shard=shard)
    started = time.monotonic()
    last_report = started
    try:
        with (
            (staging / RESULTS).open("wb") as results_handle,
            (staging / DEAD_LETTERS).open("wb") as dead_handle,
        ):
            results, dead_letters = _OutputFile(results_handle), _OutputFile(dead_handle)
            for completed in reader.read(lines, threads=threads):
                results.write(completed.results, completed.result_count)
                dead_letters.write(completed.dead_letters, completed.dead_letter_count)
                if progress is not None and time.monotonic() - last_report >= progress_every:
                    last_report = time.monotonic()
                    progress(_progress_line(reader, last_report - started))
            trailer = reader.finish()
        read = trailer.summary.get("input_sha256")
        if expected_input_sha256 is not None and read != expected_input_sha256:
            raise TrailerMismatchError(
                f"{reader.where}: the stream was computed over an input of sha256 {read or 'unknown'}, the "
                f"stage staged {expected_input_sha256}: not this shard's stream"
            )
        sealed_by = trailer.summary.get(TRAILER_ATTEMPT)
        if expected_attempt is not None and sealed_by != expected_attempt:
            raise TrailerMismatchError(
                f"{reader.where}: the stream was sealed by try {sealed_by or 'unknown'} of the enrichment, "
                f"it was read from try {expected_attempt}'s output: not this try's stream"
            )
        if expected_records is not None and trailer.results + trailer.dead_letters != expected_records:
            raise TrailerMismatchError(
                f"{reader.where}: the stream accounts for {trailer.results + trailer.dead_letters} records, "
                f"the stage staged {expected_records}: not this shard's stream"
            )
        elapsed = time.monotonic() - started
        manifest = {
            "format": MANIFEST_FORMAT,
            "run_id": trailer.run_id,
            "shard": trailer.shard,
            "plan": plan,
            "attempt": sealed_by,
            **_state(trailer.summary, trailer.results, trailer.dead_letters),
            "task": trailer.summary.get("task"),
            "model": trailer.summary.get("model"),
            # what made the results (each result's meta.provenance is its id)
            PROVENANCE: trailer.summary.get(PROVENANCE),
            "records": trailer.results + trailer.dead_letters,
            "results": trailer.results,
            "dead_letters": trailer.dead_letters,
            # results an incremental run published from an earlier output, sent to no model
            REUSED: int(trailer.summary.get(REUSED, 0)),
            # blank input lines hold no record: counted, so that every input line is accounted for
            "skipped_blank_lines": int(trailer.summary.get("skipped_blank_lines", 0)),
            "frames": trailer.frames,
            "plaintext_bytes": trailer.plaintext_bytes,
            "plaintext_chain_sha256": trailer.plaintext_chain_sha256,
            "output_format": output_format,
            "partition_by": partition_by,
            "files": (
                {RESULTS: results.describe(), DEAD_LETTERS: dead_letters.describe()}
                if output_format == JSONL_OUTPUT
                else _as_parquet(staging, enrichment_schema, carried_columns, partition_by)
            ),
            "worker_summary": trailer.summary,
            "extract": {
                "source": source,
                "log_bytes": reader.log_bytes,
                "skipped_log_lines": reader.skipped_lines,
                "seconds": round(elapsed, 3),
                "mb_per_s": round(reader.log_bytes / 1e6 / elapsed, 2) if elapsed > 0 else None,
            },
        }
        published = _already_published(destination, manifest)
        if published is not None:
            return published
        if before_publish is not None:
            before_publish()
        _publish(destination, staging, manifest)
        return manifest
    finally:
        remove_tree(staging)


def _state(summary: dict[str, Any], results: int, dead_letters: int) -> dict[str, Any]:
    """The shard's state, from the worker's sealed summary: a worker over its dead-letter threshold wrote
    every record, but the shard failed, and its output is published without ``_SUCCESS``."""
    if not summary.get("dead_letter_threshold_exceeded"):
        return {"state": SUCCEEDED}
    records = results + dead_letters
    return {
        "state": FAILED,
        "failure": (
            f"{dead_letters} of {records} records went to the dead letters, over the worker's "
            f"max_dead_letter_ratio {summary.get('max_dead_letter_ratio')}"
        ),
    }


def _progress_line(reader: FrameReader, elapsed: float) -> str:
    return (
        f"extract frames={reader.frames} results={reader.results} dead_letters={reader.dead_letters} "
        f"log_mb={reader.log_bytes / 1e6:.1f} rate_mb_s={reader.log_bytes / 1e6 / max(elapsed, 1e-9):.1f}"
    )


def _already_published(destination: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Return the published manifest when the same stream was published before, else None."""
    if manifest["state"] == SUCCEEDED and not (destination / SUCCESS).exists():
        return None
    try:
        existing: dict[str, Any] = json.loads((destination / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    same = all(
        existing.get(k) == manifest[k]
        for k in ("run_id", "shard", "plan", "plaintext_chain_sha256", "output_format", "partition_by")
    )
    return existing if same else None


def _publish(destination: Any, staging: Any, manifest: dict[str, Any]) -> None:
    manifest["published_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    success = destination / SUCCESS
    if success.exists():
        success.unlink()  # readers must not trust the old output while it is being replaced
    fs = destination.fs
    for name in {name for names in OUTPUT_FILES.values() for name in names} - set(manifest["files"]):
        if (earlier := destination / name).exists():  # another format's output of the shard
            earlier.unlink()
    remove_tree(destination / PARTITIONED_RESULTS)  # an earlier output's partitions: replaced whole
    for name in manifest["files"]:
        target = destination / name
        if target.exists():
            target.unlink()
        if "/" in name:
            target.parent.mkdir(parents=True, exist_ok=True)
        fs.mv((staging / name).path, target.path)
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if manifest["state"] == SUCCEEDED:
        success.write_text("")


def _as_parquet(
    staging: Any,
    enrichment_schema: dict[str, Any] | None,
    carried_columns: str | None,
    partition_by: str | None,
) -> dict[str, Any]:
    """Write the staged, verified lines as Parquet beside them (the results partitioned, with
    ``partition_by``) and remove them; describe the Parquet files."""
    from llm_etl_provider.formats.parquet import write_parquet, write_partitioned

    results, dead_letters = (staging / name for name in OUTPUT_FILES[JSONL_OUTPUT])
    described: dict[str, Any] = {}
    typing: dict[str, Any] = {"enrichment_schema": enrichment_schema, "carried": carried_columns}
    if partition_by is not None:
        with tempfile.TemporaryDirectory(prefix="llm-etl-partitions-") as scratch:
            rows = write_partitioned(
                functools.partial(_json_lines, results), Path(scratch), partition_by, **typing
            )
            for name, count in sorted(rows.items()):
                target = staging / PARTITIONED_RESULTS / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with (Path(scratch) / name).open("rb") as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                described[f"{PARTITIONED_RESULTS}/{name}"] = _described(target, count)
    else:
        target = staging / OUTPUT_FILES[PARQUET_OUTPUT][0]
        with target.open("wb") as out:
            count = write_parquet(functools.partial(_json_lines, results), out, **typing)
        described[target.name] = _described(target, count)
    target = staging / OUTPUT_FILES[PARQUET_OUTPUT][1]
    with target.open("wb") as out:
        count = write_parquet(functools.partial(_json_lines, dead_letters), out, dead_letters=True)
    described[target.name] = _described(target, count)
    results.unlink()
    dead_letters.unlink()
    return described


def _described(path: Any, rows: int) -> dict[str, Any]:
    """A published Parquet file in the manifest: its rows, size and digest."""
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def published_rows(shard: Any, *, dead_letters: bool = False) -> Iterator[dict[str, Any] | None]:
    """A published shard's results (or dead letters), one at a time, in whichever format they were
    published: JSON lines (None for a line that is not a JSON object), a Parquet file, or a partitioned
    folder of them (whose partition column is in the folders' names, not in the rows)."""
    jsonl, parquet = (
        names[1 if dead_letters else 0]
        for names in (OUTPUT_FILES[JSONL_OUTPUT], OUTPUT_FILES[PARQUET_OUTPUT])
    )
    files = [shard / parquet]
    if not dead_letters and (shard / PARTITIONED_RESULTS).exists():
        files = sorted((shard / PARTITIONED_RESULTS).glob("*/*.parquet"), key=str)
    if any(file.exists() for file in files):
        from llm_etl_provider.formats.parquet import parquet_rows

        for file in files:
            with file.open("rb") as handle:
                yield from parquet_rows(handle)
        return
    try:
        handle = (shard / jsonl).open("rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            yield line if isinstance(line, dict) else None


def _json_lines(path: Any) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield json.loads(raw)


def remove_stale_staging(root: str | PathLike[str] | Any, *, older_than: float) -> int:
    """Remove the extraction staging folders anywhere under ``root`` that were made before ``older_than``
    (a Unix time), or whose name does not say when; return how many. The extraction removes its own shard's;
    this is for shards whose extraction was killed and never tried again."""
    removed = 0
    base = as_upath(root)
    if not base.exists():
        return 0
    for staging in base.glob(f"**/{STAGING_PREFIX}*"):
        made = staging.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if not made.isdigit() or int(made) < older_than:
            remove_tree(staging)
            removed += 1
    return removed


def remove_tree(path: Any) -> None:
    """Remove ``path`` (a UPath or ObjectStoragePath) and everything under it, if it exists."""
    if path.exists():
        path.fs.rm(path.path, recursive=True)
