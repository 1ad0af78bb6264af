"""``llm-etl-dev``: the developer tools: a local LLM server, a stand-in for a GPU engine, the bundled model's
path, the development cluster and the demo. They serve this repository's scripts, tests and benchmarks and are
not part of the provider's package; ``llm-etl`` is the provider's own command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llm_etl_provider.cli import run


def _local_server(args: argparse.Namespace) -> int:
    from llm_etl_dev.local_server import start_detached, stop_detached
    from llm_etl_provider.backends.llama_server import LocalServerError

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
        f"stop it with: llm-etl-dev local-server --port {args.port} --stop"
    )
    return 0


def _model_path(args: argparse.Namespace) -> int:
    from llm_etl_provider.backends.llama_server import LocalServerError, bundled_model

    try:
        print(bundled_model())
    except LocalServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _dev_cluster(args: argparse.Namespace) -> int:
    from llm_etl_dev.cluster import DevCluster, DevClusterError, NodeOptions
    from llm_etl_provider.backends.llama_server import cache_dir

    archives: list[Path] = []
    if args.images is not None:
        archives = sorted(args.images.glob("*.tar"))
        if not archives:
            hint = "scripts/build-images.sh --oci-dir"
            print(f"error: no OCI archives in {args.images} ({hint})", file=sys.stderr)
            return 2
    cluster = DevCluster(args.state or cache_dir() / "dev-cluster", node=NodeOptions(image_archives=archives))
    try:
        if args.action == "up":
            cluster.up()
            for name, value in cluster.environment().items():
                print(f"{name}={value}")
        elif args.action == "down":
            cluster.down()
        else:
            print("up" if cluster.is_up() else "down")
            return 0 if cluster.is_up() else 1
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from llm_etl_dev.demo import run_demo

    return run_demo(args.output, input_path=args.input, limit=args.limit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-etl-dev", description="llm-etl-provider's developer tools")
    commands = parser.add_subparsers(dest="command", required=True)

    from llm_etl_provider.backends.llama_server import READY_TIMEOUT_SECONDS
    from llm_etl_provider.llama_cpp import CPU_PARALLEL

    server = commands.add_parser(
        "local-server", help="start llama-server with the bundled model; returns once it is ready"
    )
    server.add_argument("--port", type=int, required=True)
    server.add_argument(
        "--parallel",
        type=int,
        default=CPU_PARALLEL,
        help="request slots (continuous batching; default %(default)s)",
    )
    server.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    server.add_argument(
        "--timeout",
        type=float,
        default=READY_TIMEOUT_SECONDS,
        help="seconds to wait for readiness (default %(default)s)",
    )
    server.add_argument("--stop", action="store_true", help="stop the server started on this port")
    server.set_defaults(handler=_local_server)

    batching = commands.add_parser(
        "batching-server",
        help="serve an OpenAI-compatible stand-in for a GPU engine (continuous batching; runs until stopped)",
    )
    from llm_etl_dev import batching_server

    batching_server.add_arguments(batching)
    batching.set_defaults(handler=batching_server.run)

    model = commands.add_parser("model-path", help="print the bundled GGUF model's path (sha256 checked)")
    model.set_defaults(handler=_model_path)

    cluster = commands.add_parser(
        "dev-cluster",
        help="a real Kubernetes cluster on this machine (kube-apiserver, etcd, a kubelet with containerd and "
        "runc, kube-scheduler, kube-controller-manager, an S3 server), to try the provider on; needs root",
    )
    cluster.add_argument(
        "action", choices=("up", "down", "status"), help="up prints KUBECONFIG, AIRFLOW_KUBECONFIG, NAMESPACE"
    )
    cluster.add_argument(
        "--state", type=Path, help="its certificates, kubeconfigs, data and logs (default: cache)"
    )
    cluster.add_argument(
        "--images", type=Path, metavar="DIR",
        help="up: load DIR's OCI archives (scripts/build-images.sh --oci-dir) into the node's containerd",
    )  # fmt: skip
    cluster.set_defaults(handler=_dev_cluster)

    demo = commands.add_parser(
        "demo", help="run the example DAG locally (dag.test) on the drug-review sample with the bundled model"
    )
    demo.add_argument("--output", type=Path, default=Path("out/demo"))
    demo.add_argument("--input", type=Path, default=Path("examples/drug_reviews_sample.jsonl"))
    demo.add_argument("--limit", type=int, help="only the first N records (all 600 take ~12 min on 2 cores)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
