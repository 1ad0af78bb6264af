"""Shared e2e fixtures: a real Kubernetes cluster whose kubelet runs the pod's own images (the loader,
llama-server and the worker, built here by ``scripts/build-images.sh``), an HTTP "object store" for the
bundled model, and the example DAG configured for that cluster."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llm_etl_dev.cluster import NodeOptions
from llm_etl_dev.cluster.real_node import node_address
from llm_etl_dev.object_store import BUCKET
from llm_etl_provider.backends import EXAMPLE_NAMESPACE
from llm_etl_provider.backends.llama_server import MODEL_FILE, MODEL_SHA256, bundled_model
from llm_etl_provider.config import env_var
from tests.e2e.cluster import ProviderCluster, is_enrichment_pod
from tests.images import build_images

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"
NAMESPACE = EXAMPLE_NAMESPACE  # the example DAG's ([llm_etl] namespace unset)
MODEL_URL_SECRET = "llm-etl-model-url"


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Any]:
    """The pod's images, built once per session as OCI archives (no registry): ``{name: reference}`` and
    ``archives``, the files the node loads."""
    folder = tmp_path_factory.mktemp("images")
    built = {name: reference for name, reference, _ in build_images(folder)}
    return {**built, "archives": sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    """The bundled GGUF served over HTTP on the node's address (pods have network namespaces of their own),
    as a presigned object-storage URL would serve it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bundled_model().parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    address = node_address()
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{address}:{server.server_port}/{MODEL_FILE}"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def provider_cluster(
    state: Path, model_url: str, images: dict[str, Any], **node: Any
) -> Iterator[ProviderCluster]:
    """A development cluster (real kube-apiserver, etcd and kubelet) that runs the provider's pods from
    ``images`` and holds the model URL in a Secret."""
    options = NodeOptions(image_archives=images["archives"], **node)
    with ProviderCluster(state, NAMESPACE, options, images).running() as cluster:
        secret = {
            "metadata": {"name": MODEL_URL_SECRET},
            "data": {"url": base64.b64encode(model_url.encode()).decode()},
        }
        cluster.admin.post(cluster.path("secrets"), secret)
        cluster.remember_baseline()
        yield cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_url, images) -> Iterator[ProviderCluster]:
    with provider_cluster(tmp_path_factory.mktemp("cluster"), model_url, images) as running:
        yield running


def llm_etl_options(**options: str) -> dict[str, str]:
    """``[llm_etl]`` options (by name: ``model_source="pvc"``) as Airflow reads them from the environment,
    ``AIRFLOW__LLM_ETL__<OPTION>``: the example DAGs read them when parsed."""
    return {env_var(name): value for name, value in options.items()}


def kubernetes_settings(cluster: ProviderCluster, *, deferrable: bool, **options: str) -> dict[str, str]:
    """The environment that points the example DAG at ``cluster`` and the model it serves: its Kubernetes
    connection and ``[llm_etl]`` options, ``options`` over them."""
    defaults = {
        "execution_mode": "kubernetes",
        "namespace": NAMESPACE,
        "model_source": "object",
        "model_url_secret": MODEL_URL_SECRET,
        "model_sha256": MODEL_SHA256,
        "gpus": "0",
        "worker_image": cluster.images["worker"],
        "server_image": cluster.images["llama-server"],
        "image_pull_policy": "IfNotPresent",  # loaded into the node: no registry serves them
        "deferrable": str(deferrable).lower(),
    }
    return {
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": cluster.airflow_connection(),
        **llm_etl_options(**(defaults | options)),
    }


def _load_dag(
    monkeypatch: pytest.MonkeyPatch, cluster: ProviderCluster, *, deferrable: bool, **options: str
) -> Any:
    return load_example_dag(monkeypatch, kubernetes_settings(cluster, deferrable=deferrable, **options))


def load_example_dag(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], dag: str = "llm_enrichment"
) -> Any:
    """The example DAG ``dag`` (``dags/<dag>.py``), parsed with ``settings`` in the environment, its
    database ready for ``dag.test``."""
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    from airflow.utils.db import initdb

    initdb()
    spec = importlib.util.spec_from_file_location(dag, REPO / "dags" / f"{dag}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # as Airflow's DAG processor does: a pydantic model of the file resolves its annotations through it
    sys.modules[dag] = module
    spec.loader.exec_module(module)
    return getattr(module, dag)()


@pytest.fixture
def kubernetes_dag(monkeypatch: pytest.MonkeyPatch, cluster: ProviderCluster) -> Callable[..., Any]:
    """The example DAG in Kubernetes mode against the dev cluster: ``kubernetes_dag(deferrable=True)``, with
    more ``[llm_etl]`` options by name (``work_claim_size="1Gi"``)."""
    return functools.partial(_load_dag, monkeypatch, cluster)


def failure_said(pod: dict[str, Any]) -> str:
    """What the task's error says of why the kubelet ended ``pod`` (as the API served it): the operator's
    own :func:`~llm_etl_provider.operators.pod_step.pod_failure`. Read here, not from the task log: Airflow's
    structured task log is bound to the stream it was configured with, which an earlier test's capture may
    own."""
    from kubernetes.client import ApiClient

    from llm_etl_provider.operators.pod_step import pod_failure

    with ApiClient() as client:
        return pod_failure(client.deserialize(SimpleNamespace(data=json.dumps(pod)), "V1Pod"))


def short_reviews(count: int) -> list[str]:
    """The sample's first ``count`` reviews under 400 bytes, as lines (quick for the model on 2 cores)."""
    return [line for line in SAMPLE.read_text().splitlines(keepends=True) if len(line) < 400][:count]


def run_example(
    dag: Any, source: Path | str, output: Path | str, *, template: str = "{review}", **conf: Any
) -> Any:
    """Trigger the example DAG over ``source`` with the model the dev cluster serves (llama.cpp, SmolLM2)."""
    return dag.test(run_conf=example_conf(source, output, template=template, **conf))


def example_conf(
    source: Path | str, output: Path | str, *, template: str = "{review}", **conf: Any
) -> dict[str, Any]:
    """The example DAG's Params for ``source`` and the model the dev cluster serves."""
    return {
        "input_path": str(source),
        "output_path": str(output),
        "model": "smollm2",
        "backend": "llamacpp",
        "template": template,
        **conf,
    }


def resumable_dag(kubernetes_dag: Callable[..., Any]) -> Any:
    """The example DAG with checkpoints on work claims, one record apart, and a 1 s retry delay."""
    dag = kubernetes_dag(deferrable=False, work_claim_size="1Gi", checkpoint_every="1")
    dag.get_task("llm_enrichment.shard.enrich").retry_delay = timedelta(seconds=1)
    return dag


def _checkpointed(cluster: ProviderCluster, pod: dict[str, Any]) -> int:
    try:
        checkpoint = json.loads((cluster.volume(pod, "work") / "checkpoint.json").read_text())
        return int(checkpoint["state"]["records_done"])
    except (OSError, ValueError, KeyError):
        return 0


@contextlib.contextmanager
def preempted_mid_run(
    cluster: ProviderCluster,
    after_checkpoints: int,
    records: int,
    checkpointed: Callable[[ProviderCluster, dict[str, Any]], int] | None = None,
) -> Iterator[dict[str, int]]:
    """Delete the first pod through the API once its worker checkpointed ``after_checkpoints`` of its
    ``records`` records but not all of them, as a node drain or a spot preemption would; yield ``{pod: records
    checkpointed when it was deleted}``.

    Run the DAG with ``concurrency=1``: records in flight together finish together, and a worker that
    checkpoints its whole shard at once exits before it can be preempted. ``checkpointed(cluster, pod)``
    reads a pod's checkpoint (default: from its work claim)."""
    progress = checkpointed or _checkpointed
    lost: dict[str, int] = {}
    stop = threading.Event()

    def preempt() -> None:
        while not stop.is_set() and not lost:
            running = {
                entry.split("/")[0] for entry in cluster.running_containers() if entry.endswith("/base")
            }
            for pod in cluster.admin.get(cluster.path("pods"))["items"]:
                name = pod["metadata"]["name"]
                if (
                    name in running
                    and is_enrichment_pod(pod)
                    and after_checkpoints <= (done := progress(cluster, pod)) < records
                ):
                    cluster.admin.delete(cluster.path("pods", name))
                    lost[name] = done
                    break
            time.sleep(0.1)

    preempter = threading.Thread(target=preempt, daemon=True)
    preempter.start()
    try:
        yield lost
    finally:
        stop.set()
        preempter.join()


def published(client: Any, prefix: str) -> tuple[dict[str, int], dict[int, str], list[str]]:
    """Under ``prefix`` of the bucket: each result's id -> line, each dead letter's line -> reason, and the
    keys of every ``_SUCCESS``."""
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    results: dict[str, int] = {}
    dead: dict[int, str] = {}
    for key in keys:
        body = (
            client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            if key.endswith(".jsonl")
            else ""
        )
        for line in body.splitlines():
            record = json.loads(line)
            if key.endswith("/results.jsonl"):
                results[record["id"]] = record["line"]
            else:
                dead[record["line"]] = record["reason"]
    return results, dead, [key for key in keys if key.endswith("_SUCCESS")]
