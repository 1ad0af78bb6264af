"""The example DAG through the real KubernetesPodOperator on a real node: kubelet, containerd and runc running
the pod's own images (built here by ``scripts/build-images.sh`` with no registry), kube-scheduler placing the
pods and kube-controller-manager binding the models claim and making ServiceAccounts, as on any cluster; and
``down`` leaving no process, mount, network namespace or cgroup behind."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from llm_etl_dev.cluster.control_plane import MODEL_CLAIM
from llm_etl_dev.cluster.real_node import BRIDGE, CONTAINERD_NAMESPACE, REAL_NODE_NAME, mounts_under
from llm_etl_dev.object_store import BUCKET
from llm_etl_provider.backends.llama_server import MODEL_FILE
from llm_etl_provider.contract.layout import INPUT_VOLUME, KEY_VOLUME
from llm_etl_provider.contract.object_transport import CHECKPOINT_OBJECT, TRANSPORT_FOLDER
from tests.e2e.cluster import ProviderCluster
from tests.e2e.conftest import example_conf, preempted_mid_run, provider_cluster, published, short_reviews

# a connection of its own: Airflow caches a store per connection id for the process, and the other e2e
# modules' aws_default named another cluster's S3 server
S3_CONN = "llm_etl_real_node_s3"


def use_store(monkeypatch: pytest.MonkeyPatch, cluster: ProviderCluster) -> Any:
    """The node's S3 server as the connection ``S3_CONN``; its boto3 client."""
    account = cluster.s3()
    # the node's address: pods reach it from network namespaces of their own
    assert not account.endpoint.startswith("http://127.")
    connection = {
        "conn_type": "aws", "login": account.access_key, "password": account.secret_key,
        "extra": {"endpoint_url": account.endpoint, "region_name": "us-east-1"},
    }  # fmt: skip
    monkeypatch.setenv(f"AIRFLOW_CONN_{S3_CONN.upper()}", json.dumps(connection))
    return account.client()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_url, images) -> Iterator[ProviderCluster]:
    """The module's cluster; once it is down, nothing of the node is left: its processes, mounts, bridge and
    cgroups."""
    with provider_cluster(tmp_path_factory.mktemp("cluster"), model_url, images) as running:
        pids = running.dev._recorded()["pids"]
        yield running
    assert not [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    assert mounts_under(running.dev.node_root) == []
    assert subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode != 0
    assert not [c for c in Path("/sys/fs/cgroup").iterdir() if (c / CONTAINERD_NAMESPACE).exists()]


def pvc_dag(kubernetes_dag: Callable[..., Any], deferrable: bool, **options: str) -> Any:
    """The example DAG with the model from the cluster's models claim (no model-cache pod); ``options``:
    more ``[llm_etl]`` options."""
    return kubernetes_dag(
        deferrable=deferrable, model_source="pvc", model_claim=MODEL_CLAIM, model_path=MODEL_FILE, **options
    )


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_the_example_dag_runs_its_pods_on_a_real_kubelet(
    tmp_path, cluster, kubernetes_dag, images, deferrable
):
    dag = pvc_dag(kubernetes_dag, deferrable)
    short = short_reviews(4)
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(short))
    cluster.forget_pods()

    seen: dict[str, set[tuple[int, str]]] = {}
    secret_files: dict[str, set[tuple[int, int, int]]] = {}
    watching = threading.Event()
    watcher = threading.Thread(target=watch_processes, args=(seen, watching), daemon=True)
    watcher.start()
    secrets = threading.Thread(
        target=watch_secret_files, args=(cluster.node.kubelet_root, secret_files, watching), daemon=True
    )
    secrets.start()
    try:
        conf = example_conf(source, tmp_path / "out", shard_bytes=800, record_bytes=400)
        run = dag.test(run_conf=conf)
    finally:
        watching.set()
        watcher.join()
        secrets.join()

    assert run.state == "success"
    results = [
        json.loads(line) for path in sorted((tmp_path / "out").rglob("results.jsonl"))
        for line in path.read_text().splitlines()
    ]  # fmt: skip
    assert sorted(r["id"] for r in results) == sorted(json.loads(line)["id"] for line in short)
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    # the pods as the API served them before the cleanup deleted them: placed by kube-scheduler on the real
    # node, the loader done, the worker done, the native sidecar stopped by the kubelet once the worker ended
    ended = [p for p in cluster.created_pods() if p.get("status", {}).get("phase") == "Succeeded"]
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
    assert cluster.names("pods") == []  # the teardown removed them
    # the containers' processes as this machine saw them: the worker and the server as uid 65532, each in
    # its own root filesystem, mounted read-only
    assert seen.get("llm-etl-worker") == {(65532, "ro")}, seen
    assert seen.get("llama-server") == {(65532, "ro")}, seen
    # the Secrets as the kubelet wrote them into the pods' volumes: the shard's input and the run's key
    # readable by the pod's group only (defaultMode 0440, fsGroup 65532), owned by root
    assert {INPUT_VOLUME, KEY_VOLUME} <= set(secret_files), secret_files
    assert {mode for modes in secret_files.values() for mode in modes} == {(0o440, 0, 65532)}, secret_files


def test_an_incremental_parquet_run_with_its_golden_set_on_a_real_kubelet(tmp_path, cluster, kubernetes_dag):
    """Issue 28 in pods: a run with a golden set (measured, published apart) and Parquet results partitioned
    by the answer; the same input again with one review changed, the first run's folder as
    ``previous_output``: its shard's Secret carries the earlier results, and its worker asks the model for
    the changed review only (and any the first run could not answer)."""
    import pyarrow.parquet as pq

    lines = short_reviews(6)
    inputs, golden = [json.loads(line) for line in lines[:3]], lines[3:]
    (tmp_path / "golden.jsonl").write_text("".join(golden))

    def run(rows: list[dict[str, Any]], output: Path, **conf: Any) -> Path:
        source = tmp_path / "reviews.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        run = pvc_dag(kubernetes_dag, False).test(
            run_conf=example_conf(
                source, output, output_format="parquet", partition_by="enrichment.sentiment",
                carry_fields=["drug"], label_field="rating_label", golden_path=str(tmp_path / "golden.jsonl"),
                min_quality=0.0, **conf,
            )
        )  # fmt: skip
        assert run.state == "success"
        (manifest,) = list(output.glob("*/*/*/manifest.json"))
        return manifest.parent

    first = run(inputs, tmp_path / "first")
    changed = [dict(row) for row in inputs]
    changed[1]["review"] = "Changed my mind: it gave me headaches every single day."
    second = run(changed, tmp_path / "second", previous_output=str(first))
    for folder in (first, second):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["quality"]["golden_records"] == 3
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["golden-00001", "shard-00000"]
        assert all(p.parent.name.startswith("sentiment=") for p in folder.glob("shard-00000/results/*/*"))

    def answered(folder: Path) -> dict[str, dict[str, Any]]:
        files = sorted((folder / "shard-00000" / "results").glob("*/*.parquet"))
        return {row["id"]: row for file in files for row in pq.read_table(file).to_pylist()}

    before, after = answered(first), answered(second)
    unchanged = set(before) - {changed[1]["id"]}
    assert {i for i, row in after.items() if row["meta"]["reused"]} == unchanged
    assert all(after[i]["enrichment"] == before[i]["enrichment"] for i in unchanged)
    assert {row["drug"] for row in after.values()} <= {row["drug"] for row in inputs}
    summary = json.loads((second / "shard-00000" / "manifest.json").read_text())["worker_summary"]
    assert summary["reused"] == len(unchanged)


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


def test_an_object_transport_pod_deleted_mid_run_resumes_in_a_new_pod_after_its_last_part(
    monkeypatch, cluster, kubernetes_dag
):
    """A node drained or a spot GPU reclaimed: the pod is deleted through the API mid-shard, the kubelet stops
    it (SIGTERM, its grace period), the task's retry starts a new pod that resumes after the last part in the
    store, and every record is published once. The pods reach the store on the node's address from network
    namespaces of their own."""
    client = use_store(monkeypatch, cluster)
    short = short_reviews(12)  # seconds of work after the first parts: the kubelet stops it mid-shard
    client.put_object(Bucket=BUCKET, Key="lost/in/reviews.jsonl", Body="".join(short).encode())
    dag = pvc_dag(kubernetes_dag, False, checkpoint_every="1")
    dag.get_task("llm_enrichment.shard.enrich").retry_delay = timedelta(seconds=1)

    def checkpointed(_cluster: ProviderCluster, _pod: dict[str, Any]) -> int:
        for item in client.list_objects_v2(Bucket=BUCKET, Prefix="lost/out/").get("Contents", []):
            if f"/{TRANSPORT_FOLDER}/" in item["Key"] and item["Key"].endswith(f"/{CHECKPOINT_OBJECT}"):
                state = json.loads(client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
                return int(state["state"]["records_done"])
        return 0

    with preempted_mid_run(cluster, 2, len(short) // 2, checkpointed=checkpointed) as lost:
        run = dag.test(
            run_conf=example_conf(
                f"s3://{S3_CONN}@{BUCKET}/lost/in/reviews.jsonl", f"s3://{S3_CONN}@{BUCKET}/lost/out",
                transport="object", pods=1, concurrency=1,
            )
        )  # fmt: skip
    assert run.state == "success"
    assert len(lost) == 1, lost
    results, _, _ = published(client, "lost/out/")
    assert sorted(results) == sorted(json.loads(line)["id"] for line in short)  # none missing, none twice
    (manifest_key,) = [
        item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix="lost/out/")["Contents"]
        if item["Key"].endswith("shard-00000/manifest.json")
    ]  # fmt: skip
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert manifest["attempt"] == 2
    (done,) = lost.values()
    assert manifest["worker_summary"]["resumed_from"] >= done >= 2  # after its last part
    assert cluster.wait_until_empty() == {}
