"""``llm-etl-worker``: enrich a file of records through a local LLM server.

Its flags are the fields of :class:`~llm_etl_provider.contract.invocation.WorkerInvocation`; it exits with an
:class:`~llm_etl_provider.contract.codes.ExitCode`. Progress and the summary go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from llm_etl_provider.contract.codes import ExitCode
from llm_etl_provider.contract.duplicates import DuplicatesFileError, decode_line_numbers
from llm_etl_provider.contract.invocation import (
    API_KEY_ENV,
    LOG_OUTPUT,
    OBJECT_OUTPUT,
    WorkerInvocation,
    parse_argv,
)
from llm_etl_provider.contract.object_transport import ObjectTransport, ObjectTransportError
from llm_etl_provider.contract.reuse import ReusedFileError, decode_reused
from llm_etl_provider.contract.shard import validate_run_id
from llm_etl_provider.formats.exceptions import InputError
from llm_etl_provider.formats.records import RecordReader
from llm_etl_provider.transport.exceptions import FrameKeyError
from llm_etl_provider.transport.keys import load_key
from llm_etl_provider.worker.checkpoint import Checkpoint, run_fingerprint
from llm_etl_provider.worker.clients import http_for, make_client
from llm_etl_provider.worker.engine import Engine
from llm_etl_provider.worker.exceptions import ConfigurationError, HeartbeatError, WorkerError
from llm_etl_provider.worker.heartbeat import beat
from llm_etl_provider.worker.http_lanes import CONNECT_TIMEOUT
from llm_etl_provider.worker.object_io import TIMEOUT as STORE_TIMEOUT
from llm_etl_provider.worker.object_io import ObjectPartSink, RemoteCheckpoint, UrlSource, download_input
from llm_etl_provider.worker.sinks import JsonlFileSink, LogFrameSink, OutputSink
from llm_etl_provider.worker.tasks import TaskSpec, build_task


def read_object_transport(invocation: WorkerInvocation) -> UrlSource | None:
    """The shard's pre-signed URLs, with ``--output object`` (re-read from their file when the store refuses
    one as expired); None otherwise."""
    if invocation.output != OBJECT_OUTPUT:
        if invocation.object_transport is not None:
            raise ConfigurationError(f"--object-transport goes with --output {OBJECT_OUTPUT}")
        return None
    if invocation.object_transport is None:
        raise ConfigurationError(f"--output {OBJECT_OUTPUT} needs --object-transport")
    try:
        return UrlSource(
            ObjectTransport.from_json(invocation.object_transport.read_bytes()), invocation.object_transport
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot read {invocation.object_transport}: {exc.strerror}") from None
    except ObjectTransportError as exc:
        raise ConfigurationError(f"{invocation.object_transport}: {exc}") from None


def make_sink(
    invocation: WorkerInvocation,
    transport: UrlSource | None = None,
    store: httpx.Client | None = None,
) -> OutputSink:
    if invocation.output not in (LOG_OUTPUT, OBJECT_OUTPUT):
        if invocation.dead_letter is None:
            raise ConfigurationError("--dead-letter is required unless --output log or object")
        return JsonlFileSink(Path(invocation.output), invocation.dead_letter)
    if invocation.dead_letter is not None:
        raise ConfigurationError(
            f"--output {invocation.output} carries the dead letters in its frames: drop --dead-letter"
        )
    try:
        key = load_key(invocation.key_file)
        run_id = validate_run_id(invocation.run_id)
    except (FrameKeyError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
    if transport is not None:
        assert store is not None, "the object transport writes through a client"
        return ObjectPartSink(key, run_id, invocation.shard, invocation.attempt, transport, store)
    spool = invocation.spool or (
        invocation.checkpoint.with_name(invocation.checkpoint.name + ".frames")
        if invocation.checkpoint
        else None
    )
    return LogFrameSink(
        key, run_id, invocation.shard, invocation.attempt, sys.stdout.buffer, spool_path=spool
    )


T = TypeVar("T")


def read_duplicates(path: Path | None) -> list[int]:
    """The input lines the stage found repeating an earlier shard's id (none without a duplicates file)."""
    return [] if path is None else _read_staged(path, "duplicates", decode_line_numbers, DuplicatesFileError)


def read_reused(path: Path | None) -> dict[int, dict[str, Any]]:
    """The earlier results the stage found for the shard's records, by input line (none without a file)."""
    return {} if path is None else _read_staged(path, "reused", decode_reused, ReusedFileError)


def _read_staged(path: Path, what: str, decode: Callable[[bytes], T], malformed: type[Exception]) -> T:
    """A file the stage staged beside the shard, decoded; a ConfigurationError where it cannot be."""
    try:
        return decode(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except malformed as exc:
        raise ConfigurationError(f"the {what} file {path} is malformed: {exc}") from None


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run(invocation: WorkerInvocation) -> dict[str, Any]:
    # In its container the worker is PID 1, which ignores SIGTERM without a handler: the kubelet would wait
    # out the grace period and SIGKILL it. Stopping cancels the run, which checkpoints what it has written.
    current = asyncio.current_task()
    assert current is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    task = build_task(invocation)
    transport = read_object_transport(invocation)
    # the heartbeat (the liveness probe's) beats from the start: a large range downloads for minutes
    heartbeat = asyncio.create_task(beat(invocation.heartbeat)) if invocation.heartbeat else None
    stopped_beating: list[BaseException] = []
    if heartbeat is not None:

        def on_beat_end(beating: asyncio.Task[None]) -> None:
            # a heartbeat that cannot be touched would have the probe kill a healthy worker with no word of
            # why: stop the run instead (it checkpoints), and say so
            if not beating.cancelled() and (error := beating.exception()) is not None:
                stopped_beating.append(error)
                current.cancel()

        heartbeat.add_done_callback(on_beat_end)
    try:
        if transport is None:
            return await _enrich(invocation, task)
        with httpx.Client(timeout=STORE_TIMEOUT) as store:  # only the object transport talks to a store
            await asyncio.to_thread(download_input, transport, invocation.input, store)
            return await _enrich(invocation, task, transport, store)
    except asyncio.CancelledError:
        if stopped_beating:
            raise HeartbeatError(
                f"cannot touch the heartbeat file {invocation.heartbeat}: {stopped_beating[0]}; what was "
                "written is checkpointed"
            ) from None
        raise
    finally:
        if heartbeat is not None:
            heartbeat.cancel()


async def _enrich(
    invocation: WorkerInvocation,
    task: TaskSpec,
    transport: UrlSource | None = None,
    store: httpx.Client | None = None,
) -> dict[str, Any]:
    if not invocation.input.is_file():
        raise ConfigurationError(f"{invocation.input}: no such input file")
    reader = RecordReader(
        invocation.input,
        input_format=invocation.input_format,
        id_field=invocation.id_field,
        max_record_bytes=invocation.max_record_bytes,
        line_offset=invocation.line_offset,
        duplicate_lines=read_duplicates(invocation.duplicates),
    )
    sink = make_sink(invocation, transport, store)
    fingerprint = {
        **run_fingerprint(invocation.input, task.fingerprint, invocation.id_field),
        "output": invocation.output,
        "run_id": invocation.run_id,
        "shard": invocation.shard,
    }
    checkpoint: Checkpoint | None = None
    if transport is not None and store is not None:  # in the store: a retried pod elsewhere resumes there
        checkpoint = RemoteCheckpoint(transport, store, fingerprint)
    elif invocation.checkpoint:
        checkpoint = Checkpoint(invocation.checkpoint, fingerprint)
    headers = {"Authorization": f"Bearer {key}"} if (key := os.environ.get(API_KEY_ENV)) else {}
    # One connection per request in flight (the engine's semaphore bounds them): httpx's own pool costs CPU
    # in proportion to its connections for every request.
    timeout = httpx.Timeout(invocation.request_timeout, connect=CONNECT_TIMEOUT)
    async with http_for(invocation, timeout=timeout, headers=headers) as http:
        client = make_client(invocation, http)
        engine = Engine(
            task, client, reader, sink, invocation, checkpoint=checkpoint, log=_log,
            reused=read_reused(invocation.reused),
            # a Parquet range was checked as the stage read it, then turned into JSON lines
            input_sha256=(
                transport.transport.input.sha256
                if transport is not None and transport.transport.input.row_groups is not None
                else None
            ),
        )  # fmt: skip
        try:
            return await engine.run()
        finally:
            if invocation.summary and engine.summary is not None:
                invocation.summary.write_text(json.dumps(engine.summary, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    invocation = parse_argv(argv)
    try:
        asyncio.run(run(invocation))
    except (WorkerError, InputError) as exc:  # InputError: an input unusable as a whole (exit 2)
        _log(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _log("error: interrupted")
        return ExitCode.FAILURE
    except asyncio.CancelledError:
        _log("error: stopped by SIGTERM")
        return ExitCode.STOPPED
    except Exception as exc:  # noqa: BLE001 - any other failure: one line, no traceback, no record value
        _log(f"error: unexpected {type(exc).__name__} at {where(exc)}; what was written is checkpointed")
        return ExitCode.FAILURE
    return ExitCode.OK


def where(exc: BaseException) -> str:
    """The innermost frame of this package that the error passed through, as ``module:line (function)``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "llm_etl_provider" in f.filename]
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    module = frame.filename.rsplit("llm_etl_provider", 1)[1].strip("/").removesuffix(".py").replace("/", ".")
    return f"llm_etl_provider.{module}:{frame.lineno} ({frame.name})"


if __name__ == "__main__":
    raise SystemExit(main())
