"""The development cluster itself: a real kube-apiserver, etcd, kube-scheduler and kubelet (built from source
modules by scripts/build-kube.sh), checked as a user of `llm-etl-dev dev-cluster up` would check it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client, config

from llm_etl_provider.backends import EXAMPLE_NAMESPACE

NAMESPACE = EXAMPLE_NAMESPACE
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> Iterator[dict[str, str]]:
    """``llm-etl-dev dev-cluster up``'s output, parsed; ``down`` afterwards."""
    state = tmp_path_factory.mktemp("dev-cluster")
    command = [sys.executable, "-m", "llm_etl_dev.cli", "dev-cluster"]
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


def test_up_serves_a_real_release_that_enforces_pod_security_secret_size_and_the_role(printed, request):
    admin = config.new_client_from_config(printed["KUBECONFIG"])
    airflow = config.new_client_from_config(printed["AIRFLOW_KUBECONFIG"])
    request.addfinalizer(admin.close)  # their connections closed here, not by the GC in a later test
    request.addfinalizer(airflow.close)
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
        [sys.executable, "-m", "llm_etl_provider.cli", "render-pod", "--namespace", namespace,
         "--worker-image", "registry.example.com/llm-etl/worker:0.1.0"],
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


def test_a_pod_that_asks_for_a_gpu_waits_unschedulable(printed, request):
    admin = config.new_client_from_config(printed["KUBECONFIG"])
    request.addfinalizer(admin.close)
    core = client.CoreV1Api(admin)
    gpu = {
        "metadata": {"name": "needs-gpu"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "base", "image": "localhost/none:1", "securityContext": RESTRICTED,
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}},
            ],
        },
    }  # fmt: skip
    core.create_namespaced_pod(NAMESPACE, gpu)
    deadline = time.monotonic() + 60
    while not (pod := core.read_namespaced_pod("needs-gpu", NAMESPACE)).status.conditions:
        assert time.monotonic() < deadline, "never scheduled nor refused"
        time.sleep(0.2)
    (scheduled,) = pod.status.conditions
    assert scheduled.reason == "Unschedulable"  # kube-scheduler's verdict: the node has no GPU
    assert "Insufficient nvidia.com/gpu" in scheduled.message
    assert pod.spec.node_name is None
    core.delete_namespaced_pod("needs-gpu", NAMESPACE, grace_period_seconds=0)
