"""``llm-etl``: the project's command line: a local LLM server, the bundled model, the demo."""

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
