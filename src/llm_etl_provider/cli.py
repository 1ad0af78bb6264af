"""``llm-etl``: the project's command line: local LLM server, bundled model, keys, extraction, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _local_server(args: argparse.Namespace) -> int:
    from llm_etl_provider.local.llama_server import LocalServerError, start_detached, stop_detached

    if args.stop:
        stopped = stop_detached(args.port)
        print(f"llama-server on port {args.port} {'stopped' if stopped else 'was not running'}")
        return 0
    try:
        server = start_detached(args.port, args.parallel, args.threads, timeout=args.timeout)
    except LocalServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert server.process is not None
    print(
        f"llama-server ready at {server.url} (pid {server.process.pid}, model {server.model_name}, "
        f"{args.parallel} slots, log {server.log_path})\n"
        f"stop it with: llm-etl local-server --port {args.port} --stop"
    )
    return 0


def _model_path(args: argparse.Namespace) -> int:
    from llm_etl_provider.local.llama_server import LocalServerError, bundled_model

    try:
        print(bundled_model())
    except LocalServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from llm_etl_provider.local.demo import run_demo

    return run_demo(args.output, input_path=args.input, parallel=args.parallel)


def _new_key(args: argparse.Namespace) -> int:
    from llm_etl_provider.transport.keys import FrameKeyError, write_key_file

    try:
        write_key_file(args.path, overwrite=args.force)
    except FrameKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a new 256-bit key to {args.path} (mode 0600)")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from llm_etl_provider.transport.errors import TransportError
    from llm_etl_provider.transport.extract import extract
    from llm_etl_provider.transport.keys import FrameKeyError, load_key
    from llm_etl_provider.transport.sources import file_lines, pod_log_lines

    try:
        key = load_key(args.key_file)
    except FrameKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.namespace:
        lines = pod_log_lines(args.source, args.namespace, container=args.container)
        source = f"pod {args.namespace}/{args.source} container {args.container}"
    else:
        path = Path(args.source)
        if not path.is_file():
            print(f"error: {path}: no such log file (give --namespace to read a pod's log)", file=sys.stderr)
            return 2
        lines, source = file_lines(path), f"file {path}"

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        manifest = extract(
            lines, key, args.output, run_id=args.run_id, shard=args.shard, source=source, progress=progress
        )
    except TransportError as exc:
        print(f"error: nothing was published: {exc}", file=sys.stderr)
        return 1
    print(
        f"published {manifest['results']} results and {manifest['dead_letters']} dead letters "
        f"({manifest['frames']} frames) to {args.output}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-etl", description="llm-etl-provider tools")
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser(
        "local-server", help="start llama-server with the bundled model; returns once it is ready"
    )
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--parallel", type=int, default=4, help="request slots (continuous batching)")
    server.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    server.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    server.add_argument("--stop", action="store_true", help="stop the server started on this port")
    server.set_defaults(handler=_local_server)

    model = commands.add_parser("model-path", help="print the bundled GGUF model's path (sha256 checked)")
    model.set_defaults(handler=_model_path)

    new_key = commands.add_parser("new-key", help="write a fresh 256-bit frame key file (owner-only)")
    new_key.add_argument("path", type=Path)
    new_key.add_argument("--force", action="store_true", help="replace an existing file")
    new_key.set_defaults(handler=_new_key)

    extract = commands.add_parser(
        "extract", help="verify a sealed frame stream and publish results, dead letters and manifest"
    )
    extract.add_argument("--source", required=True, help="a log file, or a pod name with --namespace")
    extract.add_argument("--key-file", type=Path, help="the run's key file (default: $LLM_ETL_KEY)")
    extract.add_argument(
        "--output", required=True, help="a folder or URI: file://, s3://, gs://, memory:// ..."
    )
    extract.add_argument("--namespace", help="read the log of pod SOURCE in this namespace")
    extract.add_argument("--container", default="base", help="the pod's container (default: base)")
    extract.add_argument("--run-id", help="refuse frames of any other run")
    extract.add_argument("--shard", type=int, help="refuse frames of any other shard")
    extract.set_defaults(handler=_extract)

    demo = commands.add_parser("demo", help="enrich the drug-review sample with the bundled model and report")
    demo.add_argument("--output", type=Path, default=Path("out/demo"))
    demo.add_argument("--input", type=Path, default=Path("examples/drug_reviews_sample.jsonl"))
    demo.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
