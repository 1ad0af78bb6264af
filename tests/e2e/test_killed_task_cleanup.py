"""A task killed mid-run (what Airflow does on a timeout, a mark-failed or a scheduler kill): KPO's on_kill
deletes the running pod, and the teardown removes the run's Secrets and key; nothing is left, and the
records' content (canaries) shows nowhere on the way."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace
from typing import Any

from airflow.sdk import DAG

from llm_etl_provider.backends.llama_server import MODEL_SHA256
from llm_etl_provider.operators.cleanup import CleanupOperator
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.model_cache import ModelCacheOperator
from llm_etl_provider.operators.stage import StageInputOperator
from tests.e2e.conftest import MODEL_URL_SECRET, NAMESPACE, SAMPLE
from tests.e2e.test_no_patient_data_leaks import CANARY

RUN_ID = "manual__2026-11-24T05:00:00+00:00"


def context(task_id: str) -> Any:  # the parts of a task Context that KPO reads
    ti = SimpleNamespace(
        dag_id="llm_enrichment", task_id=task_id, run_id=RUN_ID, map_index=0, try_number=1,
        xcom_push=lambda **_: None,
    )  # fmt: skip
    return {"ti": ti, "task_instance": ti, "run_id": RUN_ID, "dag": SimpleNamespace(dag_id="llm_enrichment")}


def test_killing_the_enrichment_mid_run_then_the_teardown_leaves_nothing(
    tmp_path, capfd, cluster, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", cluster.airflow_connection())
    source = tmp_path / "reviews.jsonl"
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:40]]  # minutes of work
    for n, record in enumerate(records):
        record.update(id=f"{CANARY}-id-{n}", review=f"{CANARY} says: {record['review']}")
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with DAG("llm_enrichment", schedule=None):
        stage = StageInputOperator(task_id="stage", input_path=str(source), namespace=NAMESPACE)
        (shard,) = stage.execute(context("stage"))
        model: dict[str, Any] = {
            "model_source": "object",
            "model_url_secret": MODEL_URL_SECRET,
            "model_sha256": MODEL_SHA256,
            "worker_image": cluster.images["worker"],
            "image_pull_policy": "IfNotPresent",  # loaded into the node: no registry serves them
        }
        # the task group's model-cache step: the model, downloaded once into the plan's claim
        ModelCacheOperator(
            task_id="cache_model", shards=[shard], model="smollm2", backend="llamacpp", namespace=NAMESPACE,
            **model,
        ).execute(context("cache_model"))  # fmt: skip
        enrich = LLMEnrichmentOperator(
            task_id="enrich", shard=shard, model="smollm2", template="{review}", namespace=NAMESPACE,
            backend="llamacpp", gpus=0, server_image=cluster.images["llama-server"], **model,
        )  # fmt: skip
        cleanup = CleanupOperator(task_id="cleanup", namespace=NAMESPACE)
    outcome: dict[str, BaseException | None] = {}

    def run_enrichment() -> None:
        try:
            enrich.execute(context("enrich"))
            outcome["error"] = None
        except BaseException as exc:  # the killed task's error is the point
            outcome["error"] = exc

    worker = threading.Thread(target=run_enrichment)
    worker.start()
    deadline = time.monotonic() + 120
    while not any(p.endswith("/base") for p in cluster.running_containers()):
        assert time.monotonic() < deadline, "the worker never started"
        assert worker.is_alive(), outcome
        time.sleep(0.2)
    time.sleep(2)  # mid-run: the worker is enriching
    killed_at = time.monotonic()
    enrich.on_kill()
    while (left := cluster.leftovers())["pods"] or left["processes"]:  # on_kill deleted the pod
        assert time.monotonic() - killed_at < 30, left
        time.sleep(0.2)
    assert left["secrets"]  # the shard and the key wait for the teardown
    worker.join(timeout=120)
    print(f"killed task ended {time.monotonic() - killed_at:.1f} s after on_kill: {outcome['error']!r:.300}")
    assert not worker.is_alive()
    # the kubelet stopped the worker with SIGTERM and it kept what it had done (KPO's execute itself returns
    # once on_kill ran; Airflow's task runner, which called on_kill, fails the task)
    printed = "".join(capfd.readouterr())
    assert "stopped by SIGTERM" in printed
    pods = {p["metadata"]["name"] for p in cluster.created_pods()}

    cleanup.execute(context("cleanup"))
    assert cluster.wait_until_empty() == {}
    assert CANARY not in printed + "".join(capfd.readouterr()) + str(outcome["error"])
    assert CANARY not in json.dumps([cluster.created_pods(), cluster.events()])
    cluster.forget_events(pods)
