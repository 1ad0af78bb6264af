"""The example DAG through the real KubernetesPodOperator and Kubernetes client against the fake cluster.

The kubelet runs each pod's containers as local processes: ``llm-etl load-model`` downloads the bundled
SmolLM2 GGUF from a local HTTP "object store" and checks its sha256, llama.cpp's ``llama-server`` serves it
as the native sidecar, and ``llm-etl-worker`` enriches the shard; the extraction reads the sealed frames
from the pod log over the API. Nothing may remain in the cluster afterwards.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_etl_provider.local.llama_server import MODEL_FILE, MODEL_SHA256, bundled_model, find_llama_server
from tests.e2e.fake_kubernetes import FakeCluster

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"
NAMESPACE = "llm-etl"
MODEL_URL_SECRET = "llm-etl-model-url"


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    """The bundled GGUF served over HTTP, as a presigned object-storage URL would serve it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bundled_model().parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{MODEL_FILE}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_url) -> Iterator[FakeCluster]:
    curl = shutil.which("curl")
    assert curl, "the llm-server's startup probe runs curl (scripts/setup.sh installs it)"
    commands = {
        "llm-etl": [sys.executable, "-m", "llm_etl_provider.cli"],
        "llm-etl-worker": [sys.executable, "-m", "llm_etl_provider.worker.cli"],
        "/app/llama-server": [str(find_llama_server())],
        "curl": [curl],
    }
    with FakeCluster(tmp_path_factory.mktemp("node"), commands, namespace=NAMESPACE) as fake:
        fake.store.create(
            "secrets",
            NAMESPACE,
            {
                "metadata": {"name": MODEL_URL_SECRET},
                "data": {"url": base64.b64encode(model_url.encode()).decode()},
            },
        )
        yield fake


def load_dag(monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster, *, deferrable: bool):
    settings = {
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": cluster.airflow_connection(),
        "LLM_ETL_EXECUTION_MODE": "kubernetes",
        "LLM_ETL_NAMESPACE": NAMESPACE,
        "LLM_ETL_MODEL_SOURCE": "object",
        "LLM_ETL_MODEL_URL_SECRET": MODEL_URL_SECRET,
        "LLM_ETL_MODEL_SHA256": MODEL_SHA256,
        "LLM_ETL_GPUS": "0",
        "LLM_ETL_DEFERRABLE": str(deferrable).lower(),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    from airflow.utils.db import initdb

    initdb()
    spec = importlib.util.spec_from_file_location("llm_enrichment", REPO / "dags" / "llm_enrichment.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.llm_enrichment()


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_two_shards_through_kpo_are_enriched_by_the_model_and_nothing_remains(
    tmp_path, monkeypatch, capfd, cluster, deferrable
):
    short = [line for line in SAMPLE.read_text().splitlines(keepends=True) if len(line) < 400][:4]
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short))
    dag = load_dag(monkeypatch, cluster, deferrable=deferrable)
    assert dag.get_task("llm_enrichment.enrich").partial_kwargs["deferrable"] is deferrable

    run = dag.test(
        run_conf={
            "input_path": str(source),
            "output_path": str(tmp_path / "out"),
            "model": "smollm2",
            "backend": "llamacpp",
            "template": "{review}",
            "shard_bytes": 800,  # two shards of two records each
            "record_bytes": 400,
        }
    )

    assert run.state == "success"
    task_log = "".join(capfd.readouterr())
    assert "[base] start task=sentiment" in task_log  # the worker's progress reaches the task log ...
    assert "LLMETL1" not in task_log  # ... its sealed frames never do
    shard_dirs = sorted((tmp_path / "out").glob("*/shard-*"))
    assert [d.name for d in shard_dirs] == ["shard-00000", "shard-00001"]
    ids = []
    for shard_dir in shard_dirs:
        manifest = json.loads((shard_dir / "manifest.json").read_text())
        assert manifest["records"] == 2
        assert manifest["dead_letters"] == 0
        assert (shard_dir / "_SUCCESS").exists()
        results = [json.loads(line) for line in (shard_dir / "results.jsonl").read_text().splitlines()]
        assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
        ids += [r["id"] for r in results]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in short)

    started = [
        (e["involvedObject"]["name"], e["message"])
        for e in cluster.store.list("events", NAMESPACE)
        if e["reason"] == "Started"
    ]
    pods = {name for name, _ in started}
    assert len(pods) >= 2
    for pod in pods:  # each pod ran the loader, the model server and the worker
        assert {m for n, m in started if n == pod} >= {
            "Started container model-loader",
            "Started container llm-server",
            "Started container base",
        }
    assert cluster.wait_until_empty() == {"secrets": [MODEL_URL_SECRET]}
    for name in pods:  # forget this run's events, so the next run counts its own pods
        for event in cluster.store.list("events", NAMESPACE, field_selector=f"involvedObject.name={name}"):
            cluster.store.delete("events", NAMESPACE, event["metadata"]["name"])
