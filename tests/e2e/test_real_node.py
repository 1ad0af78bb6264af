"""The example DAG through the real KubernetesPodOperator on a real node: kubelet, containerd and runc running
the pod's own images (built here by ``scripts/build-images.sh`` with no registry), kube-scheduler placing the
pods and kube-controller-manager binding the models claim and making ServiceAccounts, as on any cluster; and
``down`` leaving no process, mount, network namespace or cgroup behind."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from llm_etl_provider.contract.layout import INPUT_VOLUME, KEY_VOLUME
from llm_etl_provider.contract.object_transport import CHECKPOINT_OBJECT, TRANSPORT_FOLDER
from llm_etl_provider.dev.cluster import DevCluster, NodeOptions
from llm_etl_provider.dev.cluster.real_node import (
    BRIDGE,
    CONTAINERD_NAMESPACE,
    REAL_NODE_NAME,
    RealNodePaths,
    mounts_under,
)
from llm_etl_provider.dev.llama_server import MODEL_FILE, MODEL_SHA256
from llm_etl_provider.dev.object_store import BUCKET
from tests.e2e.cluster import Recorder
from tests.e2e.conftest import example_conf, load_example_dag, short_reviews

NAMESPACE = "llm-etl"
# a connection of its own: Airflow caches a store per connection id for the process, and the other e2e
# modules' aws_default named another cluster's S3 server
S3_CONN = "llm_etl_real_node_s3"


def use_store(monkeypatch: pytest.MonkeyPatch, cluster: DevCluster) -> Any:
    """The real node's S3 server as the connection ``S3_CONN``; its boto3 client."""
    account = cluster.s3()
    assert not account.endpoint.startswith(
        "http://127."
    )  # the node's address: pods reach it from their netns
    connection = {
        "conn_type": "aws", "login": account.access_key, "password": account.secret_key,
        "extra": {"endpoint_url": account.endpoint, "region_name": "us-east-1"},
    }  # fmt: skip
    monkeypatch.setenv(f"AIRFLOW_CONN_{S3_CONN.upper()}", json.dumps(connection))
    return account.client()


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory, images) -> Iterator[DevCluster]:
    state = tmp_path_factory.mktemp("real-cluster")
    cluster = DevCluster(state, node=NodeOptions(image_archives=images["archives"]))
    cluster.up()
    pids = cluster._recorded()["pids"]
    try:
        yield cluster
    finally:
        cluster.down()
    # nothing of the node is left: its processes, mounts, bridge and cgroups
    assert not [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    assert mounts_under(cluster.node_root) == []
    assert subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode != 0
    assert not [c for c in Path("/sys/fs/cgroup").iterdir() if (c / CONTAINERD_NAMESPACE).exists()]


def real_node_dag(
    monkeypatch: pytest.MonkeyPatch,
    cluster: DevCluster,
    images: dict[str, str],
    deferrable: bool,
    **environment: str,
) -> Any:
    """The example DAG in Kubernetes mode on the real node: its images, loaded (not pulled), and the models
    claim."""
    settings = {
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": cluster.airflow_connection(),
        "LLM_ETL_EXECUTION_MODE": "kubernetes",
        "LLM_ETL_NAMESPACE": NAMESPACE,
        "LLM_ETL_MODEL_SOURCE": "pvc",
        "LLM_ETL_MODEL_CLAIM": "llm-etl-models",
        "LLM_ETL_MODEL_PATH": MODEL_FILE,
        "LLM_ETL_MODEL_SHA256": MODEL_SHA256,
        "LLM_ETL_GPUS": "0",
        "LLM_ETL_WORKER_IMAGE": images["worker"],
        "LLM_ETL_SERVER_IMAGE": images["llama-server"],
        "LLM_ETL_IMAGE_PULL_POLICY": "IfNotPresent",  # loaded into the node: no registry serves them
        "LLM_ETL_DEFERRABLE": str(deferrable).lower(),
        **environment,
    }
    return load_example_dag(monkeypatch, settings)


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_the_example_dag_runs_its_pods_on_a_real_kubelet(
    tmp_path, monkeypatch, real_cluster, images, deferrable
):
    dag = real_node_dag(monkeypatch, real_cluster, images, deferrable)
    short = short_reviews(4)
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short))

    with real_cluster.admin() as admin:
        pods = Recorder(admin, NAMESPACE, "pods")
        pods.start()
        seen: dict[str, set[tuple[int, str]]] = {}
        secret_files: dict[str, set[tuple[int, int, int]]] = {}
        watching = threading.Event()
        watcher = threading.Thread(target=watch_processes, args=(seen, watching), daemon=True)
        watcher.start()
        kubelet_root = RealNodePaths(real_cluster.node_root).kubelet_root
        secrets = threading.Thread(
            target=watch_secret_files, args=(kubelet_root, secret_files, watching), daemon=True
        )
        secrets.start()
        try:
            conf = example_conf(source, tmp_path / "out", shard_bytes=800, record_bytes=400)
            run = dag.test(run_conf=conf)
        finally:
            pods.stop()
            watching.set()
            watcher.join()
            secrets.join()
        left = admin.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]

    assert run.state == "success"
    results = [
        json.loads(line) for path in sorted((tmp_path / "out").rglob("results.jsonl"))
        for line in path.read_text().splitlines()
    ]  # fmt: skip
    assert sorted(r["id"] for r in results) == sorted(json.loads(line)["id"] for line in short)
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    # the pods as the API served them before the cleanup deleted them: placed by kube-scheduler on the real
    # node, the loader done, the worker done, the native sidecar stopped by the kubelet once the worker ended
    ended = [p for p in pods.objects.values() if p.get("status", {}).get("phase") == "Succeeded"]
    assert len(ended) == 2
    for pod in ended:
        assert pod["spec"]["nodeName"] == REAL_NODE_NAME
        states: dict[str, Any] = {
            s["name"]: s["state"]
            for s in pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]
        }
        assert states["model-loader"]["terminated"]["exitCode"] == 0
        assert states["base"]["terminated"]["exitCode"] == 0
        assert "terminated" in states["llm-server"]
        ran = {s["name"]: s["image"] for s in pod["status"]["containerStatuses"]}
        assert ran["base"].endswith(images["worker"].split("/", 1)[1])
    assert left == []  # the teardown removed them
    # the containers' processes as this machine saw them: the worker and the server as uid 65532, each in
    # its own root filesystem, mounted read-only
    assert seen.get("llm-etl-worker") == {(65532, "ro")}, seen
    assert seen.get("llama-server") == {(65532, "ro")}, seen
    # the Secrets as the kubelet wrote them into the pods' volumes: the shard's input and the run's key
    # readable by the pod's group only (defaultMode 0440, fsGroup 65532), owned by root
    assert {INPUT_VOLUME, KEY_VOLUME} <= set(secret_files), secret_files
    assert {mode for modes in secret_files.values() for mode in modes} == {(0o440, 0, 65532)}, secret_files


def watch_secret_files(
    kubelet_root: Path, seen: dict[str, set[tuple[int, int, int]]], stop: threading.Event
) -> None:
    """Record the mode, owner and group of every file of a Secret volume the kubelet holds, by volume
    name, until ``stop``."""
    while not stop.is_set():
        for path in kubelet_root.glob("pods/*/volumes/kubernetes.io~secret/*/..data/*"):
            try:
                info = path.stat()
            except OSError:
                continue
            seen.setdefault(path.parent.parent.name, set()).add(
                (info.st_mode & 0o7777, info.st_uid, info.st_gid)
            )
        stop.wait(0.2)


def watch_processes(seen: dict[str, set[tuple[int, str]]], stop: threading.Event) -> None:
    """Record the uid and root mount options of every ``llm-etl-worker`` and ``llama-server`` process that
    the node's containerd runs, until ``stop``."""
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                program = Path(argv[0].decode()).name if argv and argv[0] else ""
                if program == "python3" and len(argv) > 1:
                    program = Path(argv[1].decode()).name
                if program not in ("llm-etl-worker", "llama-server"):
                    continue
                if f"/{CONTAINERD_NAMESPACE}/" not in (entry / "cgroup").read_text():
                    continue  # not a container of the node's (a local-mode server of another test)
                uid = int((entry / "status").read_text().split("\nUid:")[1].split()[0])
                root = next(
                    line.split()[5] for line in (entry / "mountinfo").read_text().splitlines()
                    if line.split()[4] == "/"
                )  # fmt: skip
            except (OSError, IndexError, StopIteration, ValueError):
                continue
            seen.setdefault(program, set()).add((uid, root.split(",")[0]))
        stop.wait(0.2)


def test_the_object_transport_s_pods_reach_the_store_from_their_own_network(
    tmp_path, monkeypatch, real_cluster, images
):
    """On the real node each pod has a network namespace of its own: the store's URLs must name an address
    the pods reach (the node's), not the loopback of this machine."""
    client = use_store(monkeypatch, real_cluster)
    short = short_reviews(6)
    client.put_object(Bucket=BUCKET, Key="real/in/reviews.jsonl", Body="".join(short).encode())
    dag = real_node_dag(monkeypatch, real_cluster, images, deferrable=False)
    run = dag.test(
        run_conf=example_conf(
            f"s3://{S3_CONN}@{BUCKET}/real/in/reviews.jsonl", f"s3://{S3_CONN}@{BUCKET}/real/out",
            transport="object", pods=2,
        )
    )  # fmt: skip
    assert run.state == "success"
    keys, results = published(client, "real/out/")
    assert sorted(results) == sorted(json.loads(line)["id"] for line in short)
    assert len([key for key in keys if key.endswith("_SUCCESS")]) == 3  # two shards and the run


def test_an_object_transport_pod_deleted_mid_run_resumes_in_a_new_pod_after_its_last_part(
    monkeypatch, real_cluster, images
):
    """A node drained or a spot GPU reclaimed: the pod is deleted through the API mid-shard, the kubelet stops
    it (SIGTERM, its grace period), the task's retry starts a new pod that resumes after the last part in the
    store, and every record is published once."""
    client = use_store(monkeypatch, real_cluster)
    short = short_reviews(12)  # seconds of work after the first parts: the kubelet stops it mid-shard
    client.put_object(Bucket=BUCKET, Key="lost/in/reviews.jsonl", Body="".join(short).encode())
    dag = real_node_dag(monkeypatch, real_cluster, images, deferrable=False, LLM_ETL_CHECKPOINT_EVERY="1")
    dag.get_task("llm_enrichment.shard.enrich").retry_delay = timedelta(seconds=1)
    lost: dict[str, int] = {}
    stop = threading.Event()

    def checkpointed() -> int:
        for item in client.list_objects_v2(Bucket=BUCKET, Prefix="lost/out/").get("Contents", []):
            if item["Key"].endswith(f"/{TRANSPORT_FOLDER}/") or not item["Key"].endswith(
                f"/{CHECKPOINT_OBJECT}"
            ):
                continue
            state = json.loads(client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
            return int(state["state"]["records_done"])
        return 0

    def preempt() -> None:
        with real_cluster.admin() as admin:
            while not stop.is_set() and not lost:
                pods = admin.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
                running = [
                    p for p in pods
                    if p["metadata"]["labels"].get("app.kubernetes.io/component") == "enrichment"
                    and p["status"].get("phase") == "Running"
                ]  # fmt: skip
                if running and 2 <= (done := checkpointed()) < len(short) // 2:
                    name = running[0]["metadata"]["name"]
                    admin.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
                    lost[name] = done
                stop.wait(0.2)

    preempter = threading.Thread(target=preempt, daemon=True)
    preempter.start()
    try:
        run = dag.test(
            run_conf=example_conf(
                f"s3://{S3_CONN}@{BUCKET}/lost/in/reviews.jsonl", f"s3://{S3_CONN}@{BUCKET}/lost/out",
                transport="object", pods=1, concurrency=1,
            )
        )  # fmt: skip
    finally:
        stop.set()
        preempter.join()
    assert run.state == "success"
    assert len(lost) == 1, lost
    keys, results = published(client, "lost/out/")
    assert sorted(results) == sorted(json.loads(line)["id"] for line in short)  # none missing, none twice
    (manifest_key,) = [key for key in keys if key.endswith("shard-00000/manifest.json")]
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert manifest["attempt"] == 2
    (done,) = lost.values()
    assert manifest["worker_summary"]["resumed_from"] >= done >= 2  # after its last part


def published(client: Any, prefix: str) -> tuple[list[str], list[str]]:
    """The bucket's keys under ``prefix``, and the ids of the results published there."""
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    results = [
        json.loads(line)["id"]
        for key in keys if key.endswith("/results.jsonl")
        for line in client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
    ]  # fmt: skip
    return keys, results
