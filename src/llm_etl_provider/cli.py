"""``llm-etl``: the project's command line: keys, extraction, the pod's manifests and commands. Importing it
imports no Airflow: the worker's image runs its pod commands. The developer tools are ``llm-etl-dev``
(``dev/`` in the repository, not part of this package)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from llm_etl_provider.backends import EXAMPLE_NAMESPACE
from llm_etl_provider.contract.invocation import TASK_NAMES, default_of
from llm_etl_provider.contract.layout import WORKER_CONTAINER
from llm_etl_provider.pod.rbac import SERVICE_ACCOUNT_NAME
from llm_etl_provider.worker.pod_commands import add_pod_commands


def _new_key(args: argparse.Namespace) -> int:
    from llm_etl_provider.transport.exceptions import FrameKeyError
    from llm_etl_provider.transport.keys import write_key_file

    try:
        write_key_file(args.path, overwrite=args.force)
    except FrameKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a new 256-bit key to {args.path} (mode 0600)")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from llm_etl_provider.transport.exceptions import FrameKeyError, TransportError
    from llm_etl_provider.transport.extract import extract
    from llm_etl_provider.transport.keys import load_key
    from llm_etl_provider.transport.sources import file_lines, pod_log_lines

    try:
        key = load_key(args.key_file)
    except FrameKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.namespace:
        lines: Iterator[bytes] = pod_log_lines(args.source, args.namespace, container=args.container)
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


def _render_pod(args: argparse.Namespace) -> int:
    import yaml

    from llm_etl_provider.contract.layout import (
        key_secret_name,
        model_claim_name,
        run_prefix,
        shard_secret_name,
    )
    from llm_etl_provider.contract.shard import ShardDescriptor
    from llm_etl_provider.exceptions import PodSpecError
    from llm_etl_provider.pod.builder import (
        ENRICHMENT_COMPONENT,
        MODEL_CACHE_COMPONENT,
        ModelSpec,
        PodParams,
        ServerSpec,
        build_model_cache_pod,
        build_pod,
        network_policy,
        pod_invocation,
        set_pull_policy,
    )

    given = {
        "backend": args.backend,
        "parallel": args.parallel,
        "gpus": args.gpus,
        "image": args.server_image,
    }
    server = ServerSpec(**{name: value for name, value in given.items() if value is not None})
    images = {"worker_image": args.worker_image} if args.worker_image else {}
    shard = ShardDescriptor(index=0, records=0, line_offset=0, input_format="jsonl")
    prefix = run_prefix(args.dag_id, args.run_id)
    model = ModelSpec.of(args.model, args, cache_claim=model_claim_name(prefix))
    try:
        documents = [network_policy(ENRICHMENT_COMPONENT, model.source, namespace=args.namespace)]
        if model.downloaded:  # the pod that downloads the model before the enrichment pods start
            cache_pod = build_model_cache_pod(model, server, **images)
            cache_pod["metadata"]["name"] = f"{prefix}-model-cache"
            documents += [
                cache_pod,
                network_policy(MODEL_CACHE_COMPONENT, model.source, namespace=args.namespace),
            ]
        pod = build_pod(
            PodParams(
                invocation=pod_invocation(
                    {"task": args.task, "template": args.template},
                    run_id=args.run_id,
                    shard=shard,
                    server=server,
                    model=args.model,
                ),
                model=model,
                server=server,
                input_secret=shard_secret_name(prefix, shard.index),
                key_secret=key_secret_name(prefix),
                **images,
            )
        )
    except PodSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pod["metadata"]["name"] = shard_secret_name(prefix, shard.index)
    documents.insert(0, pod)
    for document in documents:
        if document["kind"] != "Pod":
            continue
        if args.namespace:
            document["metadata"]["namespace"] = args.namespace
        if args.image_pull_policy:
            set_pull_policy(document, args.image_pull_policy)
    print(yaml.safe_dump_all(documents, sort_keys=False), end="")
    return 0


def _render_rbac(args: argparse.Namespace) -> int:
    import yaml

    from llm_etl_provider.pod.rbac import rbac_manifests

    documents = rbac_manifests(
        args.namespace,
        service_accounts=args.service_account or (SERVICE_ACCOUNT_NAME,),
        service_account_namespace=args.service_account_namespace,
        users=args.user or (),
        groups=args.group or (),
    )
    print(yaml.safe_dump_all(documents, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-etl", description="llm-etl-provider tools")
    commands = parser.add_subparsers(dest="command", required=True)

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
    extract.add_argument(
        "--container", default=WORKER_CONTAINER, help=f"the pod's container (default: {WORKER_CONTAINER})"
    )
    extract.add_argument("--run-id", help="refuse frames of any other run")
    extract.add_argument("--shard", type=int, help="refuse frames of any other shard")
    extract.set_defaults(handler=_extract)

    add_pod_commands(commands)

    render = commands.add_parser(
        "render-pod",
        help="print the enrichment pod, the model-cache pod (pull, object) and the NetworkPolicies as YAML",
    )
    # Left out, the model's and the server's options take the defaults that LLMEnrichmentOperator takes
    # (llm_etl_provider.pod.builder's, which this parser does not import: the worker's image runs it).
    render.add_argument("--backend", help="ollama, llamacpp or vllm (default: the operator's)")
    render.add_argument("--model", default="llama3.2:3b", help="the model name the server serves")
    render.add_argument("--model-source", help="pull, pvc, object or image (default: the operator's)")
    render.add_argument("--model-path", help="the model's path in its volume (default: the operator's)")
    render.add_argument("--model-sha256", help="sha256 of the model file")
    render.add_argument("--model-url-secret", help="object source: a Secret whose key `url` holds the URL")
    render.add_argument("--model-claim", help="pvc source: the PersistentVolumeClaim")
    render.add_argument("--model-image", help="image source: the OCI image reference")
    render.add_argument(
        "--model-size", help="pull and object sources: room for the model (default: the operator's)"
    )
    render.add_argument(
        "--parallel",
        type=int,
        help="requests the server serves at once (default: sized for the server and GPU)",
    )
    render.add_argument(
        "--gpus", type=int, help="nvidia.com/gpu for the server, 0 for CPU (default: the operator's)"
    )
    render.add_argument(
        "--worker-image",
        help="the worker's image you built and pushed (none is published), by digest (…/worker@sha256:…)",
    )
    render.add_argument("--server-image", help="the LLM server's image (default per backend)")
    render.add_argument(
        "--image-pull-policy", choices=("Always", "IfNotPresent", "Never"),
        help="every container's (default Always; IfNotPresent for images loaded into the nodes)",
    )  # fmt: skip
    render.add_argument("--task", default=default_of("task"), choices=TASK_NAMES)
    render.add_argument("--template", help="the prompt template (default: the whole record but its id)")
    render.add_argument("--dag-id", default="llm_enrichment", help="names the run's pods and Secrets")
    render.add_argument("--run-id", default="manual__2026-01-01T00:00:00+00:00")
    render.add_argument("--namespace", default=EXAMPLE_NAMESPACE)
    render.set_defaults(handler=_render_pod)

    rbac = commands.add_parser(
        "render-rbac",
        help="print the run namespace (restricted Pod Security), Airflow's ServiceAccount, the Role it needs "
        "there and their RoleBinding as YAML, for `kubectl apply -f -`",
    )
    rbac.add_argument(
        "--namespace", default=EXAMPLE_NAMESPACE, help="the run namespace (default: %(default)s)"
    )
    rbac.add_argument(
        "--service-account", action="append", metavar="NAME",
        help="bind Airflow's ServiceAccount NAME, its workers' and triggerer's; repeat for each (default: "
        f"{SERVICE_ACCOUNT_NAME}, rendered in the run namespace)",
    )  # fmt: skip
    rbac.add_argument(
        "--service-account-namespace", metavar="NS",
        help="the ServiceAccounts live in NS, Airflow's namespace, made by its deployment (the Helm chart's "
        "<release>-worker and <release>-triggerer): bound, not rendered",
    )  # fmt: skip
    rbac.add_argument(
        "--user", action="append", metavar="NAME", help="also bind this user (an Airflow outside the cluster)"
    )
    rbac.add_argument("--group", action="append", metavar="NAME", help="also bind this group")
    rbac.set_defaults(handler=_render_rbac)

    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command's handler; its result is the exit code."""
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
