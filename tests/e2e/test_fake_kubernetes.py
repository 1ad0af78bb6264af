"""The fake cluster behaves as the Kubernetes the provider relies on, seen through the official client."""

from __future__ import annotations

import base64
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.e2e.fake_kubernetes import FakeCluster

NS = "llm-etl"

SERVER = textwrap.dedent(
    """
    import http.server, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"pong")
        def log_message(self, *args):
            pass
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)
WORKER = textwrap.dedent(
    """
    import os, sys, time, urllib.request
    print("secret:", open(sys.argv[1]).read(), flush=True)
    print("progress on stderr", file=sys.stderr, flush=True)
    print("server says", urllib.request.urlopen(sys.argv[2]).read().decode(), flush=True)
    print("env", os.environ["TOKEN"], os.environ["HOME"].endswith("/volumes/tmp/home"), flush=True)
    for i in range(int(sys.argv[3])):
        print("line", i, flush=True)
        time.sleep(0.05)
    sys.exit(int(sys.argv[4]))
    """
)


@pytest.fixture
def cluster(tmp_path) -> Iterator[FakeCluster]:
    with FakeCluster(tmp_path / "node", {"python": [sys.executable]}, namespace=NS) as fake:
        yield fake


@pytest.fixture
def api(cluster) -> client.CoreV1Api:
    configuration = client.Configuration()
    config.load_kube_config_from_dict(cluster.kubeconfig(), client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


def secret(name: str, data: dict[str, bytes], labels: dict[str, str] | None = None) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
    return {"metadata": {"name": name, "labels": labels or {}}, "data": encoded}


def pod(
    name: str, *, lines: int = 3, exit_code: int = 0, command: str = "python", **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "demo", "run": name}},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                {"name": "loader", "command": ["python", "-c", "print('loaded')"]},
                {
                    "name": "server",
                    "restartPolicy": "Always",
                    "command": ["python", "-c", SERVER, "8080"],
                    "startupProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                },
            ],
            "containers": [
                {
                    "name": "base",
                    "command": [command, "-c", WORKER],
                    "args": [
                        "/var/run/secret/token",
                        "http://127.0.0.1:8080/ping",
                        str(lines),
                        str(exit_code),
                    ],
                    "env": [
                        {"name": "HOME", "value": "/tmp/home"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}},
                    ],
                    "volumeMounts": [
                        {"name": "token", "mountPath": "/var/run/secret", "readOnly": True},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "token", "secret": {"secretName": "token", "defaultMode": 0o440}},
                {"name": "tmp", "emptyDir": {}},
            ],
            **spec,
        },
    }


def read_log(api: client.CoreV1Api, name: str, **options: Any) -> str:
    # kubernetes 36 hands a preloaded log back as str(bytes); read the body as KPO does
    response = api.read_namespaced_pod_log(name, NS, _preload_content=False, **options)
    return str(response.data.decode())


def phase_of(found: client.V1Pod) -> str | None:
    return found.status.phase if found.status else None  # no status until the kubelet has taken the pod


def wait_for_phase(api: client.CoreV1Api, name: str, phases: set[str], timeout: float = 30) -> client.V1Pod:
    deadline = time.monotonic() + timeout
    while phase_of(found := api.read_namespaced_pod(name, NS)) not in phases:
        assert time.monotonic() < deadline, f"{name} stayed {phase_of(found)}"
        time.sleep(0.1)
    return found


def test_a_pod_runs_init_sidecar_and_base_with_secrets_ports_and_logs(api, cluster):
    api.create_namespaced_secret(NS, secret("token", {"token": b"s3cret"}))
    api.create_namespaced_pod(NS, pod("one", lines=20))
    first = api.read_namespaced_pod("one", NS)
    assert first.status is None or first.status.phase in (None, "Pending")
    phases = []
    while phase_of(current := api.read_namespaced_pod("one", NS)) not in ("Succeeded", "Failed"):
        phases.append(phase_of(current))
        time.sleep(0.05)
    assert "Pending" in phases
    assert "Running" in phases
    assert phases.index("Pending") < phases.index("Running")
    assert current.status.phase == "Succeeded"
    conditions = {c.type: c.status for c in current.status.conditions}
    assert conditions["PodScheduled"] == "True"
    assert conditions["Initialized"] == "True"
    loader, server = current.status.init_container_statuses
    assert loader.state.terminated.exit_code == 0
    assert loader.state.terminated.reason == "Completed"
    assert server.state.terminated is not None  # the sidecar is stopped when base ends
    (base,) = current.status.container_statuses
    assert base.state.terminated.exit_code == 0
    assert base.state.terminated.finished_at.tzinfo is not None

    log = read_log(api, "one", container="base", timestamps=True)
    lines = log.splitlines()
    assert all(line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z") for line in lines)
    messages = [line.split(" ", 1)[1] for line in lines]
    assert "secret: s3cret" in messages
    assert "server says pong" in messages
    assert "env s3cret True" in messages
    assert "progress on stderr" in messages
    assert [m for m in messages if m.startswith("line")] == [f"line {i}" for i in range(20)]
    assert read_log(api, "one", container="loader") == "loaded\n"
    assert read_log(api, "one", container="base", tail_lines=2) == "line 18\nline 19\n"
    assert read_log(api, "one", container="base", since_seconds=3600).count("line") == 20
    events = api.list_namespaced_event(NS, field_selector="involvedObject.name=one")
    assert {"Scheduled", "Started", "Killing"} <= {e.reason for e in events.items}


def test_follow_streams_the_log_while_the_container_runs(api, cluster):
    api.create_namespaced_secret(NS, secret("token", {"token": b"t"}))
    api.create_namespaced_pod(NS, pod("follow", lines=100))
    running = wait_for_phase(api, "follow", {"Running", "Succeeded"})
    # as a kubelet: Running once a main container runs, so base's log can be read from then on
    (base,) = running.status.container_statuses
    assert base.name == "base"
    assert base.state.running or base.state.terminated, base
    response = api.read_namespaced_pod_log(
        "follow", NS, container="base", follow=True, timestamps=True, _preload_content=False
    )
    assert response.headers.get("transfer-encoding") == "chunked"
    arrived = []
    for chunk in response.stream(amt=None, decode_content=False):
        arrived.append((time.monotonic(), chunk))
    text = b"".join(c for _, c in arrived).decode()
    assert [line.split(" ", 1)[1] for line in text.splitlines() if " line " in line] == [
        f"line {i}" for i in range(100)
    ]
    assert arrived[-1][0] - arrived[0][0] > 1  # the lines came as they were written, not at the end
    # the stream ends when the process does; the kubelet records it a moment later, as a real one does
    ended = wait_for_phase(api, "follow", {"Succeeded", "Failed"})
    assert ended.status.container_statuses[0].state.terminated is not None


def test_exit_codes_fail_the_pod_and_unknown_programs_never_start(api, cluster):
    api.create_namespaced_secret(NS, secret("token", {"token": b"t"}))
    api.create_namespaced_pod(NS, pod("fails", exit_code=3))
    failed = wait_for_phase(api, "fails", {"Succeeded", "Failed"})
    assert failed.status.phase == "Failed"
    assert failed.status.container_statuses[0].state.terminated.exit_code == 3
    assert failed.status.container_statuses[0].state.terminated.reason == "Error"

    api.create_namespaced_pod(NS, pod("unknown", command="no-such-program"))
    deadline = time.monotonic() + 30
    while not (
        waiting := api.read_namespaced_pod("unknown", NS).status.container_statuses[0].state.waiting
    ) or (waiting.reason != "ErrImageNeverPull"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.read_namespaced_pod("unknown", NS).status.phase == "Pending"  # init done, base cannot start


def test_a_missing_secret_keeps_the_pod_pending_until_it_exists(api, cluster):
    api.create_namespaced_pod(NS, pod("waits"))
    time.sleep(1.5)
    assert api.read_namespaced_pod("waits", NS).status.phase == "Pending"
    events = api.list_namespaced_event(NS, field_selector="involvedObject.name=waits")
    assert "FailedMount" in {e.reason for e in events.items}
    api.create_namespaced_secret(NS, secret("token", {"token": b"t"}))
    assert wait_for_phase(api, "waits", {"Succeeded", "Failed"}).status.phase == "Succeeded"


def test_deleting_a_running_pod_stops_its_processes_and_removes_everything(api, cluster):
    api.create_namespaced_secret(NS, secret("token", {"token": b"t"}))
    api.create_namespaced_pod(NS, pod("doomed", lines=100000))
    wait_for_phase(api, "doomed", {"Running"})
    assert cluster.kubelet.running_processes()
    deleted = api.delete_namespaced_pod("doomed", NS)
    assert deleted.metadata.deletion_timestamp is not None
    api.delete_namespaced_secret("token", NS)
    assert cluster.wait_until_empty(timeout=20) == {}
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_pod("doomed", NS)
    assert missing.value.status == 404


def test_active_deadline_fails_the_pod(api, cluster):
    api.create_namespaced_secret(NS, secret("token", {"token": b"t"}))
    api.create_namespaced_pod(NS, pod("late", lines=100000, activeDeadlineSeconds=3))
    failed = wait_for_phase(api, "late", {"Succeeded", "Failed"}, timeout=30)
    assert failed.status.phase == "Failed"
    assert failed.status.reason == "DeadlineExceeded"
    assert cluster.kubelet.running_processes() == []


def test_selectors_patches_and_api_errors(api, cluster):
    api.create_namespaced_secret(NS, secret("a", {"k": b"1"}, {"run": "r1", "kind": "shard"}))
    api.create_namespaced_secret(NS, secret("b", {"k": b"2"}, {"run": "r1"}))
    api.create_namespaced_secret(NS, secret("c", {"k": b"3"}, {"run": "r2", "kind": "shard"}))

    def names(selector: str) -> list[str]:
        return [s.metadata.name for s in api.list_namespaced_secret(NS, label_selector=selector).items]

    assert names("run=r1") == ["a", "b"]
    assert names("run=r1,kind=shard") == ["a"]
    assert names("run!=r1") == ["c"]
    assert names("!kind") == ["b"]
    assert names("kind") == ["a", "c"]
    assert base64.b64decode(api.read_namespaced_secret("c", NS).data["k"]) == b"3"
    with pytest.raises(ApiException) as conflict:
        api.create_namespaced_secret(NS, secret("a", {}))
    assert conflict.value.status == 409
    api.patch_namespaced_secret("a", NS, {"metadata": {"labels": {"checked": "True", "kind": None}}})
    assert api.read_namespaced_secret("a", NS).metadata.labels == {"run": "r1", "checked": "True"}
    api.delete_namespaced_secret("a", NS)
    with pytest.raises(ApiException) as gone:
        api.delete_namespaced_secret("a", NS)
    assert gone.value.status == 404
    assert names("") == ["b", "c"]
