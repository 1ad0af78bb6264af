"""The example DAG through the real KubernetesPodOperator and Kubernetes client against a real API server.

The node's kubelet runs each pod from the project's own images: the model-cache pod downloads the bundled
SmolLM2 GGUF from a local HTTP "object store" into the plan's claim and checks its sha256, llama.cpp's
``llama-server`` serves it as the native sidecar, and ``llm-etl-worker`` enriches the shard; the extraction
reads the sealed frames from the pod log over the API. Nothing may remain in the cluster afterwards.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from llm_etl_dev.object_store import BUCKET
from llm_etl_provider.contract.object_transport import TRANSPORT_FOLDER
from llm_etl_provider.transport.frames import FORMAT
from tests.e2e.conftest import (
    MODEL_URL_SECRET,
    NAMESPACE,
    SAMPLE,
    failure_said,
    kubernetes_settings,
    load_example_dag,
    preempted_mid_run,
    published,
    resumable_dag,
    run_example,
    short_reviews,
)


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_two_shards_through_kpo_are_enriched_by_the_model_and_nothing_remains(
    tmp_path, capfd, cluster, kubernetes_dag, deferrable
):
    short = short_reviews(4)
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short))
    dag = kubernetes_dag(deferrable=deferrable)
    assert dag.get_task("llm_enrichment.shard.enrich").deferrable is deferrable
    policies_before = set(cluster.policies.objects)

    run = run_example(
        dag,
        source,
        tmp_path / "out",
        shard_bytes=800,
        record_bytes=400,  # two shards of two records each
    )

    assert run.state == "success"
    task_log = "".join(capfd.readouterr())
    assert "[base] start task=sentiment" in task_log  # the worker's progress reaches the task log ...
    assert FORMAT not in task_log  # ... its sealed frames never do
    shard_dirs = sorted((tmp_path / "out").glob("*/*/*/shard-*"))
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
    run_manifest = json.loads((shard_dirs[0].parent / "manifest.json").read_text())
    assert run_manifest["state"] == "succeeded"
    assert (shard_dirs[0].parent / "_SUCCESS").exists()
    for entry in run_manifest["shards"]:  # measured from the pods' status before the cleanup removed them
        assert entry["pods"] == 1
        assert entry["pod_seconds"] > 0
        assert entry["model_load_seconds"] is not None

    started = cluster.started_containers()
    pods = {name for name, _ in started}
    # one pod downloaded the model (into the plan's model claim) and ran nothing else; it alone had egress
    cache_pods = {pod for pod in pods if pod.startswith("llm-etl-model-cache")}
    assert len(cache_pods) == 1
    # the NetworkPolicies as the API served them: none of an enrichment pod allows any egress (the log
    # transport), and the one that allows DNS and HTTPS selects the model-cache component alone
    egress: dict[str, list[Any]] = {}
    for uid, policy in cluster.policies.objects.items():
        if uid not in policies_before:
            selected = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            egress.setdefault(selected, []).append(policy["spec"].get("egress", []))
    assert len(egress["enrichment"]) >= 2
    assert all(rules == [] for rules in egress["enrichment"])
    (cache_rules,) = egress["model-cache"]
    assert {port["port"] for rule in cache_rules for port in rule["ports"]} == {53, 443}
    assert {c for n, c in started if n in cache_pods} == {"base"}
    assert len(pods - cache_pods) >= 2
    for pod in pods - cache_pods:  # each enrichment pod ran the loader (a check), the server and the worker
        assert {c for n, c in started if n == pod} >= {"model-loader", "llm-server", "base"}
    assert cluster.wait_until_empty() == {}
    cluster.forget_events(pods)


def test_a_failing_shard_publishes_its_dead_letters_fails_the_run_and_the_teardown_removes_everything(
    tmp_path, cluster, kubernetes_dag
):
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:2]))
    dag = kubernetes_dag(deferrable=False)

    # No record has this field: the worker dead-letters them all and exits 4 (the dead-letter threshold).
    run = run_example(dag, source, tmp_path / "out", template="{no_such_field}")

    assert run.state == "failed"
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        states = {
            ti.task_id.split(".")[-1]: ti.state
            for ti in session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=run.run_id)
        }
    assert states == {
        "stage": "success",
        "cache_model": "success",  # the model source `object`: downloaded once, where no prompt is
        "shards": "success",
        "enrich": "failed",
        "extract": "failed",  # it published the failed shard's dead letters, then failed without a retry
        "publish": "failed",  # the run's manifest is written, its _SUCCESS is not
        "cleanup": "success",
    }
    assert not list((tmp_path / "out").rglob("_SUCCESS"))
    (shard_dir,) = (tmp_path / "out").glob("*/*/*/shard-00000")
    shard_manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert shard_manifest["state"] == "failed"
    assert "2 of 2 records went to the dead letters" in shard_manifest["failure"]
    assert len((shard_dir / "dead_letter.jsonl").read_text().splitlines()) == 2  # the reasons, published
    run_manifest = json.loads((shard_dir.parent / "manifest.json").read_text())
    assert run_manifest["state"] == "failed"
    assert [s["state"] for s in run_manifest["shards"]] == ["failed"]
    failed = [p for p in cluster.events() if p["reason"] == "Started"]
    assert failed  # the pod did run before it failed
    assert cluster.wait_until_empty() == {}
    cluster.forget_events({e["involvedObject"]["name"] for e in failed})


def test_the_sweeper_removes_ended_and_expired_runs_and_never_a_live_one(cluster, monkeypatch):
    from types import SimpleNamespace

    from airflow.sdk import DAG

    from llm_etl_provider.contract.layout import LABEL_RUN, MANAGED_BY, run_annotations
    from llm_etl_provider.operators.cleanup import SweepExpiredOperator

    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", cluster.airflow_connection())
    future, past = time.time() + 3600, time.time() - 1
    secrets = {
        "live-key": run_annotations("llm_enrichment", "live", future),
        "ended-key": run_annotations("llm_enrichment", "ended", future),
        "theirs-key": run_annotations("elsewhere", "x", future),  # a run this Airflow does not know
        "lost-key": run_annotations("elsewhere", "y", past),  # ... past its deadline
        "legacy-key": None,  # made before runs recorded themselves: by age
    }
    for name, recorded in secrets.items():
        labels = {**MANAGED_BY, LABEL_RUN: name}
        cluster.admin.post(cluster.path("secrets"), {"metadata": {"name": name, "labels": labels,
                                                                  "annotations": recorded}})  # fmt: skip
    cluster.admin.post(
        cluster.path("secrets"), {"metadata": {"name": "someone-elses", "labels": {"app": "x"}}}
    )
    time.sleep(3.5)  # every one of them is now older than the TTL below: age alone decides nothing
    states = {("llm_enrichment", "live"): "running", ("llm_enrichment", "ended"): "success"}

    def get_dagrun_state(dag_id: str, run_id: str) -> str:
        return states[(dag_id, run_id)]  # an unknown run raises, as Airflow's API answers 404

    with DAG("llm_etl_sweeper", schedule=None):
        sweeper = SweepExpiredOperator(task_id="sweep", namespace=NAMESPACE, ttl_seconds=2)
    swept = sweeper.execute({"ti": SimpleNamespace(get_dagrun_state=get_dagrun_state)})  # type: ignore[typeddict-item]
    assert swept == {
        "pods": 0,
        "secrets": 3,
        "claims": 0,
        "network_policies": 0,
        "local_dirs": 0,
        "staging": 0,
    }
    left = cluster.names("secrets")
    assert left == ["live-key", MODEL_URL_SECRET, "someone-elses", "theirs-key"]
    for name in ("live-key", "someone-elses", "theirs-key"):
        cluster.admin.delete(cluster.path("secrets", name))


def test_a_pod_lost_mid_run_resumes_in_a_new_pod_and_every_record_is_published_once(
    tmp_path, cluster, kubernetes_dag
):
    short = short_reviews(12)
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short))
    # Checkpoints on a work claim that outlives the pod, one record apart: the retry redoes at most one.
    dag = resumable_dag(kubernetes_dag)
    cluster.forget_pods()
    # deleted in the shard's first half: the kubelet's SIGTERM comes long before the worker could finish
    with preempted_mid_run(cluster, after_checkpoints=2, records=len(short) // 2) as lost:
        run = run_example(dag, source, tmp_path / "out", concurrency=1)

    assert run.state == "success"
    assert len(lost) == 1
    pods = {p["metadata"]["name"] for p in cluster.enrichment_pods()}
    assert len(pods) == 2  # the lost pod and the retry's
    (results,) = list((tmp_path / "out").rglob("results.jsonl"))
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in short)  # none missing, none twice
    manifest = json.loads((results.parent / "manifest.json").read_text())
    (checkpointed,) = lost.values()
    # the retry started from the lost pod's last checkpoint: it redid only the record in flight
    assert manifest["worker_summary"]["resumed_from"] >= checkpointed >= 2
    assert cluster.wait_until_empty() == {}
    cluster.forget_events(pods)


def test_the_models_claim_of_the_dev_cluster_serves_the_example_dag_as_the_readme_says(
    tmp_path, cluster, kubernetes_dag
):
    from llm_etl_dev.cluster.control_plane import MODEL_CLAIM
    from llm_etl_provider.backends.llama_server import MODEL_FILE

    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:2]))
    dag = kubernetes_dag(deferrable=False, model_source="pvc", model_claim=MODEL_CLAIM, model_path=MODEL_FILE)
    cluster.forget_pods()
    run = run_example(dag, source, tmp_path / "out")
    assert run.state == "success"
    (results,) = (tmp_path / "out").rglob("results.jsonl")
    assert len(results.read_text().splitlines()) == 2
    (pod,) = cluster.enrichment_pods()
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [MODEL_CLAIM]  # the model came from the claim, not from a download
    assert cluster.wait_until_empty() == {}
    cluster.forget_events({pod["metadata"]["name"]})


@pytest.fixture
def s3_environment(cluster, monkeypatch):
    """Airflow's ``aws_default`` through the dev cluster's S3 server, as ``dev-cluster up`` prints it."""
    account = cluster.s3()
    for name, value in account.environment().items():
        monkeypatch.setenv(name, value)
    return account


def test_three_pods_by_the_object_transport_publish_what_the_log_transport_does_with_no_input_in_secrets(
    tmp_path, cluster, kubernetes_dag, s3_environment
):
    short = short_reviews(9)
    client = s3_environment.client()
    client.put_object(Bucket=BUCKET, Key="e2e/in/reviews.jsonl", Body="".join(short).encode())
    dag = kubernetes_dag(deferrable=False)
    cluster.forget_pods()
    secrets_before = set(cluster.secrets.objects)

    run = run_example(
        dag, f"s3://aws_default@{BUCKET}/e2e/in/reviews.jsonl", f"s3://aws_default@{BUCKET}/e2e/object",
        transport="object", pods=3,
    )  # fmt: skip

    assert run.state == "success"
    pods = cluster.enrichment_pods()
    assert len(pods) == 3
    loads = [
        status for pod in pods for status in pod["status"].get("initContainerStatuses", [])
        if status["name"] == "model-loader" and status["state"].get("terminated", {}).get("exitCode") == 0
    ]  # fmt: skip
    assert len(loads) == 3  # one model load per pod
    # 0 bytes of the input in Kubernetes: the shard Secrets hold pre-signed URLs (the stage's, and in a
    # mutable Secret each, the ones signed when the pod started), the key Secret the key
    secrets = [s for uid, s in cluster.secrets.objects.items() if uid not in secrets_before]
    assert len(secrets) == 7
    urls = [s for s in secrets if s["metadata"]["name"].endswith("-urls")]
    assert len(urls) == 3
    assert all(s.get("immutable") is not True for s in urls)  # renewed in place while the pod runs
    assert all(s.get("immutable") is True for s in secrets if s not in urls)
    mounted = {
        volume["secret"]["secretName"]
        for pod in pods
        for volume in pod["spec"]["volumes"]
        if volume["name"] == "urls"
    }
    assert mounted == {s["metadata"]["name"] for s in urls}
    held = {name for s in secrets for name in (s.get("data") or {})}
    assert held <= {"object.json", "duplicates.gz", "key"}
    decoded = b"".join(base64.b64decode(v) for s in secrets for v in (s.get("data") or {}).values())
    assert all(json.loads(line)["review"][:40].encode() not in decoded for line in short)
    results, dead, successes = published(client, "e2e/object/")
    assert len(successes) == 4  # three shards and the run
    assert dead == {}
    assert sorted(results) == sorted(json.loads(line)["id"] for line in short)
    leftovers = client.list_objects_v2(Bucket=BUCKET, Prefix="e2e/object/").get("Contents", [])
    assert not [item["Key"] for item in leftovers if f"/{TRANSPORT_FOLDER}/" in item["Key"]]  # cleaned up
    # the log transport over the same input: the same records at the same lines
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short))
    assert run_example(dag, source, tmp_path / "out", transport="log").state == "success"
    logged = {
        json.loads(line)["id"]: json.loads(line)["line"]
        for path in (tmp_path / "out").rglob("results.jsonl")
        for line in path.read_text().splitlines()
    }
    assert logged == results
    assert cluster.wait_until_empty() == {}


def test_a_stage_run_again_keeps_its_plans_key_and_staging_on_the_real_api_server(
    tmp_path, cluster, monkeypatch
):
    """Airflow clears a shard's setup with it: the stage ran again with a new key and new Secrets while the
    mapped tasks kept the old descriptors, so every shard still running sealed with a lost key. As Airflow's
    Role identity on a real kube-apiserver: the same plan keeps its key and Secrets (immutable, 409 kept), a
    lost key is made anew after the plan's leftovers go, and a failed stage leaves nothing."""
    from airflow.sdk import DAG

    from llm_etl_provider.operators.cleanup import CleanupOperator
    from llm_etl_provider.operators.stage import StageInputOperator
    from tests.task_context import task_context

    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", cluster.airflow_connection())
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short_reviews(12)))
    with DAG("llm_enrichment", schedule=None):
        settings: dict[str, Any] = {
            "input_path": str(source), "namespace": NAMESPACE, "max_shard_bytes": 1500,
            "max_record_bytes": 700, "work_claim_size": "1Mi",
        }  # fmt: skip
        stage = StageInputOperator(task_id="stage", **settings)
        cleanup = CleanupOperator(task_id="cleanup", namespace=NAMESPACE)

    def key(name: str) -> str:
        return str(cluster.admin.get(cluster.path("secrets", name))["data"]["key"])

    first = stage.execute(task_context("r-again"))
    assert len(first) > 1
    held = key(first[0]["key_secret"])
    assert stage.execute(task_context("r-again")) == first  # run again: the same descriptors, the same key
    assert key(first[0]["key_secret"]) == held
    cluster.admin.delete(cluster.path("secrets", first[0]["key_secret"]))  # the key lost (a cleanup ran)
    assert stage.execute(task_context("r-again")) == first
    assert key(first[0]["key_secret"]) != held
    claims = [n for n in cluster.names("persistentvolumeclaims") if n.startswith(first[0]["key_secret"][:-4])]
    assert len(claims) == len(first)
    deleted = cleanup.execute(task_context("r-again"))
    assert deleted["secrets"] == len(first) + 1
    assert cluster.wait_until_empty() == {}


def test_a_worker_killed_for_its_memory_is_reported_as_oom_killed_and_retried(
    tmp_path, cluster, kubernetes_dag
):
    """The kubelet enforces the worker's memory limit (the cgroup's): a worker over it is killed by the
    kernel, the task says OOMKilled and Airflow retries it; nothing is published."""
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short_reviews(2)))
    dag = kubernetes_dag(deferrable=False)
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    # far below what Python needs; set past the stage, which refuses a limit too small for a shard's records
    enrich.worker_memory = "24Mi"
    enrich.retry_delay = timedelta(seconds=1)
    cluster.forget_pods()

    run = run_example(dag, source, tmp_path / "out")

    assert run.state == "failed"
    pods = {p["metadata"]["name"]: p for p in cluster.enrichment_pods()}
    assert len(pods) == 1 + enrich.retries  # the first try and each retry ran a pod
    for pod in pods.values():
        (worker,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "base"]
        assert worker["state"]["terminated"]["reason"] == "OOMKilled", worker
        assert "base OOMKilled" in failure_said(pod)  # each try's error says why
    assert not list((tmp_path / "out").rglob("_SUCCESS"))
    assert cluster.wait_until_empty() == {}
    cluster.forget_events(set(pods))


def test_a_pod_over_its_emptydir_limit_is_evicted_and_the_task_says_why(
    tmp_path, cluster, kubernetes_dag, monkeypatch
):
    """The kubelet's eviction manager measures each emptyDir against its sizeLimit: a pod whose work folder
    outgrows it is evicted mid-shard, and the task's error carries the kubelet's reason."""
    from llm_etl_provider.contract import layout
    from llm_etl_provider.pod.builder import build_pod

    def with_a_tiny_work_folder(params: Any) -> dict[str, Any]:
        pod = build_pod(params)
        for volume in pod["spec"]["volumes"]:
            if volume["name"] == layout.WORK_VOLUME:
                volume["emptyDir"]["sizeLimit"] = "1Ki"  # the folder itself takes 4 KiB
        return pod

    monkeypatch.setattr("llm_etl_provider.operators.enrichment.build_pod", with_a_tiny_work_folder)
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short_reviews(80)))  # longer than the kubelet takes to notice
    dag = kubernetes_dag(deferrable=False)
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    enrich.retries = 0
    cluster.forget_pods()

    run = run_example(dag, source, tmp_path / "out", concurrency=1)

    assert run.state == "failed"
    (pod,) = cluster.enrichment_pods()
    assert pod["status"]["reason"] == "Evicted", pod["status"]
    assert 'Evicted: Usage of EmptyDir volume "work" exceeds the limit "1Ki"' in failure_said(pod)
    assert not list((tmp_path / "out").rglob("_SUCCESS"))
    assert cluster.wait_until_empty() == {}
    cluster.forget_events({pod["metadata"]["name"]})


def batch_deployment(monkeypatch: pytest.MonkeyPatch, cluster: Any, *, deferrable: bool) -> None:
    """Kubernetes execution on ``cluster`` for llm-etl batches: llama.cpp's server in each pod, the model
    downloaded by the model-cache pod, and an ``llm_etl`` connection that names no server."""
    for name, value in kubernetes_settings(cluster, deferrable=deferrable, backend="llamacpp").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_CONN_LLM_ETL_DEFAULT", json.dumps({"conn_type": "llm_etl"}))


def batch_records(cluster: Any) -> list[dict[str, Any]]:
    """The record Secrets of the batches in the namespace."""
    return [
        s
        for s in cluster.admin.get(cluster.path("secrets"))["items"]
        if s["metadata"]["name"].endswith("-batch")
    ]


def test_airflow_s_llm_batch_runs_its_prompts_as_pods_deferred_and_its_run_s_sweep_removes_them(
    tmp_path, cluster, monkeypatch, capfd
):
    """``dags/llm_batch.py`` in Kubernetes execution: common.ai's trigger polls the batch, whose model-cache
    pod downloads the model and whose shard pod serves it beside the worker; the rows come from the pod's
    sealed log. The batch's objects carry the DAG run, so the sweeper removes them once it has ended."""
    from llm_etl_provider.backends.kubernetes import core_v1, networking_v1, sweep

    batch_deployment(monkeypatch, cluster, deferrable=True)
    dag = load_example_dag(monkeypatch, {}, "llm_batch")
    assert dag.get_task("classify").deferrable
    cluster.forget_pods()

    run = dag.test(run_conf={"reviews": 3, "result_path": str(tmp_path / "batches")})

    assert run.state == "success", cluster.describe()
    (landed,) = list((tmp_path / "batches").glob("*/*.jsonl"))
    rows = [json.loads(line) for line in landed.read_text().splitlines()]
    assert sorted(row["index"] for row in rows) == [0, 1, 2]
    succeeded = [row for row in rows if row["status"] == "success"]
    assert len(succeeded) >= 2, rows
    assert all(row["usage"]["output_tokens"] > 0 for row in succeeded)
    pods = cluster.created_pods()
    assert sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods) == [
        "enrichment", "model-cache",
    ]  # fmt: skip
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    assert {p["metadata"]["annotations"]["llm-etl.io/dag-id"] for p in pods} == {"llm_batch"}
    assert {p["metadata"]["annotations"]["llm-etl.io/run-id"] for p in pods} == {run.run_id}
    task_log = "".join(capfd.readouterr())
    assert FORMAT not in task_log
    prompts = [json.loads(line)["review"] for line in SAMPLE.read_text().splitlines()[:3]]
    assert not [p for p in prompts if p[:60] in task_log]  # nothing of a prompt in the log
    assert not [p for p in prompts if p[:60] in json.dumps(pods)]  # nor in the pods' specs
    # the batch's objects stay for a clear to land its rows again, until the sweeper sees the run end
    assert len(batch_records(cluster)) == 1
    swept = sweep(
        core_v1("kubernetes_default"), networking_v1("kubernetes_default"), NAMESPACE,
        lambda dag_id, run_id: "success" if (dag_id, run_id) == ("llm_batch", run.run_id) else "running",
        now=time.time(), unannotated_older_than=datetime.now(UTC) - timedelta(days=1),
        log=logging.getLogger(__name__),
    )  # fmt: skip
    assert swept["pods"] == 2, swept
    assert cluster.wait_until_empty() == {}


def test_an_llm_batch_re_attaches_on_retry_and_a_cancel_deletes_its_pods_mid_run(
    tmp_path, cluster, monkeypatch
):
    """common.ai's operator run twice for the same task and input finds its batch (no second pod); an orphan
    is found by key and fingerprint only; a cancel while the worker runs deletes everything of the batch."""
    from airflow.providers.common.ai.batch.output_schema import build_output_spec
    from airflow.providers.common.ai.operators.llm_batch import LLMBatchOperator

    from llm_etl_provider.batch.adapter import LLMEtlBatchAdapter
    from llm_etl_provider.batch.job import BatchNotFoundError

    batch_deployment(monkeypatch, cluster, deferrable=False)
    prompts = [json.loads(line)["review"] for line in short_reviews(2)]
    ti = SimpleNamespace(dag_id="batch", task_id="classify", run_id="manual__2026-12-07", map_index=-1)

    def execute() -> dict[str, Any]:
        op = LLMBatchOperator(
            task_id="classify", requests=prompts, result_path=str(tmp_path / "rows"),
            llm_conn_id="llm_etl_default",
            model_id="llm-etl:smollm2", deferrable=False, do_xcom_push=False, max_tokens=16,
            system_prompt="Say whether the drug review is positive or negative.",
        )  # fmt: skip
        op.poll_interval = 2
        context: Any = {"task_instance": ti, "ti": ti}  # what the operator reads of its task's context
        manifest: dict[str, Any] = op.execute(context)
        return manifest

    cluster.forget_pods()
    first = execute()
    assert len(cluster.enrichment_pods()) == 1
    again = execute()
    assert again["batch_id"] == first["batch_id"]
    assert len(cluster.created_pods()) == 2  # the model-cache pod and the one shard's: none new
    adapter = LLMEtlBatchAdapter()
    adapter.cancel_batch(first["batch_id"])
    assert cluster.wait_until_empty() == {}

    # a batch cancelled while its worker runs: its pods go, and polling it says it is unknown
    spec = build_output_spec(str)
    submitted = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    batch_id = adapter.submit(
        [{"prompt": p} for p in prompts * 20], model="smollm2", idempotency_key="0123456789abcdef",
        input_fingerprint="f" * 64, output_spec=spec, system_prompt="", max_tokens=64,
    ).batch_id  # fmt: skip
    assert adapter.find_orphaned_batch("0123456789abcdef", "f" * 64, submitted) == batch_id
    assert adapter.find_orphaned_batch("0123456789abcdef", "e" * 64, submitted) is None
    assert adapter.find_orphaned_batch("fedcba9876543210", "f" * 64, submitted) is None
    deadline = time.monotonic() + 300
    while not cluster.worker_running() and time.monotonic() < deadline:
        assert adapter.get_batch(batch_id).status == "in_progress", cluster.describe()
        time.sleep(1)
    assert cluster.worker_running(), cluster.describe()
    adapter.cancel_batch(batch_id)
    assert cluster.wait_until_empty(timeout=60) == {}
    with pytest.raises(BatchNotFoundError):
        adapter.get_batch(batch_id)
