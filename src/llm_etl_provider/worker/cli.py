"""``llm-etl-worker``: enrich a file of records through a local LLM server.

Exit codes: 0 done, 1 unexpected failure, 2 configuration or unusable input, 3 LLM server unavailable,
4 dead-letter threshold exceeded (all outputs are written), 143 stopped by SIGTERM (what was written is
checkpointed). Progress and the summary go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from llm_etl_provider.transport.frames import validate_run_id
from llm_etl_provider.transport.keys import KEY_ENV, FrameKeyError, load_key
from llm_etl_provider.worker.checkpoint import Checkpoint, run_fingerprint
from llm_etl_provider.worker.clients import make_client
from llm_etl_provider.worker.engine import Engine, EngineSettings
from llm_etl_provider.worker.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STOPPED,
    ConfigurationError,
    WorkerError,
)
from llm_etl_provider.worker.heartbeat import beat
from llm_etl_provider.worker.records import RecordReader
from llm_etl_provider.worker.retry import RetryPolicy
from llm_etl_provider.worker.sinks import JsonlFileSink, LogFrameSink, OutputSink
from llm_etl_provider.worker.tasks import TASK_NAMES, TaskSpec, build_task

API_KEY_ENV = "LLM_ETL_API_KEY"
RUN_ID_ENV = "LLM_ETL_RUN_ID"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _concurrency(text: str) -> int | None:
    return None if text == "auto" else _positive_int(text)


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-etl-worker",
        description="Enrich records with a local LLM server. Progress and the summary go to stderr.",
    )
    task = parser.add_argument_group("task")
    task.add_argument("--task", required=True, choices=TASK_NAMES)
    task.add_argument("--template", help="user prompt over record fields, e.g. '{review}' (default '{text}')")
    task.add_argument(
        "--system-prompt", help="system prompt (required for custom; overrides the catalogue's)"
    )
    task.add_argument("--schema", help="output JSON schema for custom: a file path or inline JSON")
    task.add_argument("--categories", type=_csv_list, help="tags: comma-separated categories to choose from")
    task.add_argument("--entity-types", type=_csv_list, help="entities: comma-separated entity types")
    task.add_argument("--max-tokens", type=_positive_int, help="answer length limit (default per task)")

    io = parser.add_argument_group("input and output")
    io.add_argument("--input", required=True, type=Path, help="JSONL or CSV file, plain or gzip")
    io.add_argument("--input-format", default="auto", choices=["auto", "jsonl", "csv"])
    io.add_argument("--id-field", default="id", help="the field that identifies a record (default: id)")
    io.add_argument(
        "--output",
        required=True,
        help="results file (JSONL), or 'log' for sealed frames on stdout (results and dead letters together)",
    )
    io.add_argument("--dead-letter", type=Path, help="dead-letter file (JSONL); not used with --output log")
    io.add_argument("--key-file", type=Path, help=f"--output log: the run's key file (default: ${KEY_ENV})")
    io.add_argument("--run-id", default=os.environ.get(RUN_ID_ENV, "run"), help="--output log: the run id")
    io.add_argument("--shard", type=int, default=0, help="--output log: the shard number")
    io.add_argument(
        "--spool",
        type=Path,
        help="--output log: keep frames here for a resume (default: the checkpoint + .frames)",
    )
    io.add_argument("--checkpoint", type=Path, help="checkpoint file; a restart with it resumes the run")
    io.add_argument(
        "--heartbeat", type=Path, help="a file touched every 10 s while the worker runs (for liveness probes)"
    )
    io.add_argument("--checkpoint-every", type=_positive_int, default=100, help="records between checkpoints")
    io.add_argument(
        "--max-record-bytes", type=_positive_int, default=1 << 20, help="larger records are dead-lettered"
    )
    io.add_argument("--line-offset", type=int, default=0, help="added to reported line numbers (for shards)")
    io.add_argument(
        "--duplicate-lines",
        type=_line_numbers,
        default=(),
        help="comma-separated input lines whose id an earlier shard already holds (dead-lettered)",
    )
    io.add_argument("--summary", type=Path, help="also write the final summary to this JSON file")

    llm = parser.add_argument_group("LLM server")
    llm.add_argument("--llm-url", required=True, help="server root, e.g. http://127.0.0.1:11434")
    llm.add_argument("--api", default="openai", choices=["openai", "ollama"])
    llm.add_argument("--model", required=True)
    llm.add_argument(
        "--response-format",
        default="json_schema",
        choices=["json_schema", "json_object"],
        help="openai: how to send the schema (json_object for llama-cpp-python's server)",
    )
    llm.add_argument("--keep-alive", default="10m", help="ollama: how long the model stays loaded")
    llm.add_argument("--temperature", type=float, default=0.0)
    llm.add_argument(
        "--concurrency", type=_concurrency, default=None, help="requests in flight, or auto (default)"
    )
    llm.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    llm.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the server")
    llm.add_argument(
        "--max-attempts", type=_positive_int, default=4, help="attempts per record, retries included"
    )
    llm.add_argument("--max-dead-letter-ratio", type=float, default=0.1, help="fail the run above this share")
    llm.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    return parser


def _load_schema(value: str) -> dict[str, Any]:
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the schema file {value}: {exc.strerror}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the schema is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(schema, dict):
        raise ConfigurationError("the schema must be a JSON object")
    return schema


def task_from_args(args: argparse.Namespace) -> TaskSpec:
    return build_task(
        args.task,
        template=args.template,
        system_prompt=args.system_prompt,
        schema=_load_schema(args.schema) if args.schema else None,
        categories=args.categories,
        entity_types=args.entity_types,
        max_tokens=args.max_tokens,
    )


def make_sink(args: argparse.Namespace) -> OutputSink:
    if args.output != "log":
        if args.dead_letter is None:
            raise ConfigurationError("--dead-letter is required unless --output log")
        return JsonlFileSink(Path(args.output), args.dead_letter)
    if args.dead_letter is not None:
        raise ConfigurationError("--output log carries the dead letters in its frames: drop --dead-letter")
    try:
        key = load_key(args.key_file)
        run_id = validate_run_id(args.run_id)
    except (FrameKeyError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
    spool = args.spool or (
        args.checkpoint.with_name(args.checkpoint.name + ".frames") if args.checkpoint else None
    )
    return LogFrameSink(key, run_id, args.shard, sys.stdout.buffer, spool_path=spool)


def _line_numbers(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in value.split(",") if n.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated line numbers") from None


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # In its container the worker is PID 1, which ignores SIGTERM without a handler: the kubelet would wait
    # out the grace period and SIGKILL it. Stopping cancels the run, which checkpoints what it has written.
    current = asyncio.current_task()
    assert current is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    task = task_from_args(args)
    if not args.input.is_file():
        raise ConfigurationError(f"{args.input}: no such input file")
    reader = RecordReader(
        args.input,
        input_format=args.input_format,
        id_field=args.id_field,
        max_record_bytes=args.max_record_bytes,
        line_offset=args.line_offset,
        duplicate_lines=args.duplicate_lines,
    )
    sink = make_sink(args)
    checkpoint = (
        Checkpoint(
            args.checkpoint,
            {
                **run_fingerprint(args.input, task.fingerprint, args.id_field),
                "output": args.output,
                "run_id": args.run_id,
                "shard": args.shard,
            },
        )
        if args.checkpoint
        else None
    )
    settings = EngineSettings(
        concurrency=args.concurrency,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        checkpoint_every=args.checkpoint_every,
        progress_interval=args.progress_interval,
        max_dead_letter_ratio=args.max_dead_letter_ratio,
        ready_timeout=args.ready_timeout,
    )
    headers = {"Authorization": f"Bearer {key}"} if (key := os.environ.get(API_KEY_ENV)) else {}
    # The pool is sized for any concurrency the engine may pick; the engine's semaphore is the real bound.
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    timeout = httpx.Timeout(args.request_timeout, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as http:
        client = make_client(
            args.api,
            http,
            args.llm_url,
            args.model,
            response_format=args.response_format,
            keep_alive=args.keep_alive,
        )
        engine = Engine(task, client, reader, sink, settings, checkpoint=checkpoint, log=_log)
        heartbeat = asyncio.create_task(beat(args.heartbeat)) if args.heartbeat else None
        try:
            return await engine.run()
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            if args.summary and engine.summary is not None:
                args.summary.write_text(json.dumps(engine.summary, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(run(args))
    except WorkerError as exc:
        _log(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _log("error: interrupted")
        return EXIT_FAILURE
    except asyncio.CancelledError:
        _log("error: stopped by SIGTERM")
        return EXIT_STOPPED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
