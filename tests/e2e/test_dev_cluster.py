"""The development cluster itself: a real kube-apiserver and etcd (built from source modules by
scripts/build-kube.sh) with the dev node, checked as a user of `llm-etl dev-cluster up` would check it, and
the node's kubelet behaviours that the provider's tests do not reach (sidecar and liveness restarts, previous
logs, graceful deletion, deadlines, a pod that does not fit)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config

from llm_etl_provider.dev.cluster import DevCluster, NodeOptions
from llm_etl_provider.dev.cluster.api import ApiError, KubeApi
from tests.e2e.cluster import running_containers

NAMESPACE = "llm-etl"
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> Iterator[dict[str, str]]:
    """``llm-etl dev-cluster up``'s output, parsed; ``down`` afterwards."""
    state = tmp_path_factory.mktemp("dev-cluster")
    command = [sys.executable, "-m", "llm_etl_provider.cli", "dev-cluster"]
    up = subprocess.run([*command, "up", "--state", str(state)], capture_output=True, text=True, check=False)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == [
        "KUBECONFIG", "AIRFLOW_KUBECONFIG", "NAMESPACE",
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
    ]  # fmt: skip
    yield dict(line.split("=", 1) for line in lines)
    pids = [int(pid) for pid in yaml.safe_load((state / "cluster.json").read_text())["pids"].values()]
    down = subprocess.run(
        [*command, "down", "--state", str(state)], capture_output=True, text=True, check=False
    )
    assert down.returncode == 0, down.stderr
    for (
        pid
    ) in pids:  # etcd, kube-apiserver, the node, the S3 server: gone (or a zombie of this process's child)
        assert not Path(f"/proc/{pid}").exists() or " Z" in Path(f"/proc/{pid}/stat").read_text()[-200:]
    status = subprocess.run([*command, "status", "--state", str(state)], capture_output=True, text=True)
    assert status.stdout.strip() == "down"


def test_up_serves_s3_with_the_bucket_and_the_printed_identity_only(printed):
    """The issue's outside check puts its input under s3://llm-etl/ with what ``up`` printed."""
    import boto3
    import botocore.exceptions

    endpoint = printed["AWS_ENDPOINT_URL"]
    signed = boto3.client(
        "s3", endpoint_url=endpoint, region_name=printed["AWS_DEFAULT_REGION"],
        aws_access_key_id=printed["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=printed["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    signed.put_object(Bucket="llm-etl", Key="in/x.jsonl", Body=b'{"id": 1}\n')
    assert signed.get_object(Bucket="llm-etl", Key="in/x.jsonl")["Body"].read() == b'{"id": 1}\n'
    assert httpx.get(f"{endpoint}/llm-etl/in/x.jsonl").status_code == 403  # unsigned: refused
    wrong = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=printed["AWS_ACCESS_KEY_ID"], aws_secret_access_key="not-the-secret",
    )  # fmt: skip
    with pytest.raises(botocore.exceptions.ClientError):
        wrong.get_object(Bucket="llm-etl", Key="in/x.jsonl")


def test_up_serves_a_real_release_that_enforces_pod_security_secret_size_and_the_role(printed):
    admin = config.new_client_from_config(printed["KUBECONFIG"])
    airflow = config.new_client_from_config(printed["AIRFLOW_KUBECONFIG"])
    namespace = printed["NAMESPACE"]
    assert namespace == NAMESPACE

    version = client.VersionApi(admin).get_code()
    assert version.git_version.startswith("v1."), version
    assert version.git_tree_state == "clean", version

    core = client.CoreV1Api(admin)
    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, privileged)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]

    too_big = {"metadata": {"name": "too-big"}, "data": {"a": base64.b64encode(b"x" * (2**20 + 1)).decode()}}
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_secret(namespace, too_big)
    assert refused.value.status == 422
    assert "may not be more than 1048576 bytes" in json.loads(refused.value.body)["message"]

    rendered = subprocess.run(
        [sys.executable, "-m", "llm_etl_provider.cli", "render-pod", "--namespace", namespace],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    documents = list(yaml.safe_load_all(rendered.stdout))
    pods = [d for d in documents if d["kind"] == "Pod"]
    assert len(pods) == 2  # the enrichment pod and, for the default `pull` source, the model-cache pod
    for pod in pods:
        for identity in (admin, airflow):  # each passes the restricted standard, and Airflow may create it
            created = client.CoreV1Api(identity).create_namespaced_pod(namespace, pod, dry_run="All")
            assert created.metadata.name == pod["metadata"]["name"]
    for policy in (d for d in documents if d["kind"] == "NetworkPolicy"):
        client.NetworkingV1Api(admin).create_namespaced_network_policy(namespace, policy, dry_run="All")
    assert not core.list_namespaced_pod(namespace).items  # a dry run stores nothing

    airflow_core = client.CoreV1Api(airflow)
    assert airflow_core.list_namespaced_secret(namespace) is not None  # the Role's own namespace
    for forbidden in (
        lambda: airflow_core.list_namespaced_secret("default"),
        lambda: airflow_core.list_namespaced_config_map(namespace),
        lambda: airflow_core.list_node(),
        lambda: client.RbacAuthorizationV1Api(airflow).list_namespaced_role(namespace),
    ):
        with pytest.raises(client.ApiException) as refused:
            forbidden()
        assert refused.value.status == 403


# -- the node's kubelet behaviours, on a cluster of this module's own --------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[DevCluster]:
    commands = {"sh": ["/bin/sh"], "python": [sys.executable]}
    cluster = DevCluster(tmp_path_factory.mktemp("dev-node"), node=NodeOptions(commands=commands))
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def admin(dev) -> Iterator[KubeApi]:
    with dev.admin() as api:
        yield api
        for pod in api.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
            api.delete(
                f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}", {"gracePeriodSeconds": 0}
            )


def shell(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "sh",
        "command": ["sh", "-c", script],
        "securityContext": RESTRICTED,
        **extra,
    }


def create_pod(admin: KubeApi, name: str, containers: list[dict[str, Any]], **spec: Any) -> str:
    pod = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": containers,
            **spec,
        },
    }
    admin.post(f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
    return f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"


def until(condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


def status_of(admin: KubeApi, path: str, container: str) -> dict[str, Any]:
    pod = admin.get(path)
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
    return next((s for s in statuses if s["name"] == container), {})


def log(admin: KubeApi, path: str, **params: str) -> str:
    return str(admin.request("GET", path + "/log", params=params, raw=True))


def test_a_log_follows_through_the_api_servers_proxy_until_the_container_ends(admin):
    path = create_pod(admin, "counter", [shell("base", "for i in 1 2 3; do echo line $i; sleep 1; done")])
    until(lambda: admin.get(path)["status"].get("phase") == "Running")
    followed = log(admin, path, container="base", follow="true", timestamps="true")
    assert [line.split(" ", 1)[1] for line in followed.splitlines()] == ["line 1", "line 2", "line 3"]
    until(lambda: admin.get(path)["status"]["phase"] == "Succeeded", 10)  # the status follows the exit
    assert log(admin, path, container="base", tailLines="1") == "line 3\n"
    with pytest.raises(ApiError) as refused:
        log(admin, path, container="base", previous="true")
    assert refused.value.code == 400
    assert "previous terminated container" in refused.value.message


def test_a_sidecar_that_exits_is_restarted_and_its_previous_log_is_kept(admin):
    sidecar = shell("helper", "echo run; sleep 1; exit 3", restartPolicy="Always")
    path = create_pod(admin, "restarts", [shell("base", "sleep 30")], initContainers=[sidecar])
    until(lambda: status_of(admin, path, "helper").get("restartCount", 0) >= 1, 60)
    helper = status_of(admin, path, "helper")
    assert helper["lastState"]["terminated"]["exitCode"] == 3
    assert log(admin, path, container="helper", previous="true") == "run\n"
    reasons = {e["reason"] for e in admin.get(f"/api/v1/namespaces/{NAMESPACE}/events")["items"]}
    assert "BackOff" in reasons


def test_a_failing_liveness_probe_restarts_the_sidecar(admin):
    probe = {"exec": {"command": ["sh", "-c", "exit 1"]}, "periodSeconds": 1, "failureThreshold": 2}
    sidecar = shell("server", "echo up; sleep 60", restartPolicy="Always", livenessProbe=probe)
    path = create_pod(admin, "unhealthy", [shell("base", "sleep 60")], initContainers=[sidecar])
    until(lambda: status_of(admin, path, "server").get("restartCount", 0) >= 1, 60)
    events = admin.get(f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    assert any(e["reason"] == "Unhealthy" and e["involvedObject"]["name"] == "unhealthy" for e in events)


def test_deletion_sends_sigterm_waits_the_grace_period_and_then_removes_the_pod(admin, dev, tmp_path):
    marker = tmp_path / "terminated"
    script = f"trap 'echo bye > {marker}; exit 0' TERM; while true; do sleep 0.1; done"
    path = create_pod(admin, "graceful", [shell("base", script)], terminationGracePeriodSeconds=5)
    until(lambda: admin.get(path)["status"].get("phase") == "Running")
    admin.delete(path)
    assert admin.get(path)["metadata"]["deletionTimestamp"]  # graceful: the pod is still there, terminating
    until(lambda: not admin.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"], 30)
    assert marker.read_text() == "bye\n"  # the container saw SIGTERM and could finish
    assert not any(container.startswith("graceful/") for container in running_containers())


def test_a_pod_past_its_deadline_is_stopped_and_failed(admin):
    path = create_pod(admin, "late", [shell("base", "sleep 60")], activeDeadlineSeconds=2)
    pod = until(lambda: (p := admin.get(path))["status"].get("phase") == "Failed" and p, 30)
    assert pod["status"]["reason"] == "DeadlineExceeded"


def test_a_pod_that_asks_for_a_gpu_waits_unschedulable(admin):
    gpu = shell("base", "true", resources={"limits": {"nvidia.com/gpu": "1"}})
    path = create_pod(admin, "needs-gpu", [gpu])
    pod = until(lambda: (p := admin.get(path))["status"].get("conditions") and p)
    (scheduled,) = pod["status"]["conditions"]
    assert scheduled["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    assert "nodeName" not in pod["spec"]
