"""The development cluster's node: a node agent that runs pods bound to it as local processes.

It is a node of a real kube-apiserver. It registers a Node, binds pending pods that fit it (as the scheduler's
identity: it is the cluster's only node, so binding is the whole of scheduling), runs the pods bound to it (as
the node's identity, under the Node authorizer and NodeRestriction) and reports their status and events
through the API, and serves the kubelet API's ``containerLogs`` over TLS, so that ``pods/log`` flows through
the API server's proxy as on any cluster.

How it runs a pod is :mod:`llm_etl_provider.dev.cluster.pods`; its kubelet API,
:mod:`llm_etl_provider.dev.cluster.kubelet_api`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from llm_etl_provider.dev.cluster.api import ApiError, KubeApi, rfc3339
from llm_etl_provider.dev.cluster.kubelet_api import KubeletServer
from llm_etl_provider.dev.cluster.layout import (
    NODE_ADDRESS,
    NodeConfig,
    claim_dir,
)
from llm_etl_provider.dev.cluster.pods import PodRunner, pod_reference, record_event
from llm_etl_provider.dev.cluster.scheduling import unfit_reasons

PVC_PROTECTION = "kubernetes.io/pvc-protection"
RECONCILE_SECONDS = 0.2


class NodeAgent:
    """Registers the node, binds pods to it, runs them (one :class:`PodRunner` each) and serves their logs."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.api = KubeApi(config.server, config.ca, config.node_cert, config.node_key)
        self.scheduler = KubeApi(config.server, config.ca, config.scheduler_cert, config.scheduler_key)
        self.controller = KubeApi(config.server, config.ca, config.controller_cert, config.controller_key)
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._unschedulable: dict[str, str] = {}
        self._logs = KubeletServer(self)
        self._thread = threading.Thread(target=self._loop, name="node-agent", daemon=True)

    # -- registration --------------------------------------------------------------------------------

    def register(self) -> None:
        """Create the Node (or take over an earlier registration) and report it Ready."""
        config = self.config
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": config.name,
                "labels": {
                    "kubernetes.io/hostname": config.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **config.labels,
                },
            },
        }
        self.api.ensure("/api/v1/nodes", node)
        now = rfc3339()
        self.api.patch(
            f"/api/v1/nodes/{config.name}/status",
            {
                "status": {
                    "capacity": config.capacity,
                    "allocatable": config.capacity,
                    "addresses": [
                        {"type": "InternalIP", "address": NODE_ADDRESS},
                        {"type": "Hostname", "address": config.name},
                    ],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": config.kubelet_port}},
                    "nodeInfo": {
                        "machineID": "",
                        "systemUUID": "",
                        "bootID": "",
                        "kernelVersion": os.uname().release,
                        "osImage": "llm-etl dev node (local processes)",
                        "containerRuntimeVersion": "local://0",
                        "kubeletVersion": "",
                        "kubeProxyVersion": "",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                    },
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "llm-etl dev node is posting ready status",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                }
            },
            kind="strategic-merge",
        )

    # -- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.config.root.mkdir(parents=True, exist_ok=True)
        self._logs.start()
        self.register()
        self._thread.start()

    def _loop(self) -> None:
        last_claims = 0.0
        while not self._stop.is_set():
            try:
                self._reconcile()
                if time.monotonic() - last_claims > 2:
                    self._reclaim_claims()
                    last_claims = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - one bad round must not stop the node: say it, go on
                print(f"dev node: {exc!r}", flush=True)
            self._stop.wait(RECONCILE_SECONDS)

    def _reconcile(self) -> None:
        mine = self.api.get("/api/v1/pods", fieldSelector=f"spec.nodeName={self.config.name}")["items"]
        present = set()
        for pod in mine:
            uid = pod["metadata"]["uid"]
            present.add(uid)
            with self._lock:
                runner = self.runners.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if runner is None:
                    self.api.delete(
                        f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}",
                        {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                    )
                else:
                    runner.delete(pod["metadata"].get("deletionGracePeriodSeconds"))
            elif runner is None and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                runner = PodRunner(self.api, pod, self.config)
                with self._lock:
                    self.runners[uid] = runner
                runner.start()
        with self._lock:
            gone = [runner for uid, runner in self.runners.items() if uid not in present]
            ended = [uid for uid, runner in self.runners.items() if runner.removed.is_set()]
            for uid in ended:
                del self.runners[uid]
        for runner in gone:  # deleted with no grace by someone else: stop what is left of it
            runner.delete(0)
        self._schedule(mine)

    def _schedule(self, mine: list[dict[str, Any]]) -> None:
        pending = self.scheduler.get(
            "/api/v1/pods", fieldSelector="spec.nodeName=,status.phase!=Succeeded,status.phase!=Failed"
        )["items"]
        if not pending:
            return
        node = self.api.get(f"/api/v1/nodes/{self.config.name}")
        bound = [p for p in mine if p["status"].get("phase") not in ("Succeeded", "Failed")]
        for pod in pending:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or pod["spec"].get("schedulerName", "default-scheduler") != (
                "default-scheduler"
            ):
                continue
            reasons = unfit_reasons(pod, node, bound)
            if reasons:
                self._unfit(pod, reasons)
                continue
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.name},
            }
            try:
                self.scheduler.post(path + "/binding", binding)
            except ApiError as exc:
                if exc.code in (404, 409):  # deleted meanwhile, or bound by someone else
                    continue
                raise
            self._unschedulable.pop(meta["uid"], None)
            bound.append(pod)
            message = f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.config.name}"
            record_event(self.scheduler, self.config.name, pod_reference(pod), "Scheduled", message)

    def _unfit(self, pod: dict[str, Any], reasons: list[str]) -> None:
        """Say once, as kube-scheduler does, why the pod waits: a condition PodScheduled=False, an event."""
        meta = pod["metadata"]
        message = f"0/1 nodes are available: {', '.join(reasons)}."
        if self._unschedulable.get(meta["uid"]) == message:
            return
        self._unschedulable[meta["uid"]] = message
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastTransitionTime": rfc3339()}  # fmt: skip
        with contextlib.suppress(ApiError):
            self.scheduler.patch(
                path + "/status", {"status": {"conditions": [condition]}}, kind="strategic-merge"
            )
        record_event(
            self.scheduler, self.config.name, pod_reference(pod), "FailedScheduling", message, "Warning"
        )

    def _reclaim_claims(self) -> None:
        """What kube-controller-manager's pvc-protection controller and a reclaim policy of Delete would do:
        a deleted claim that no running pod uses loses its ``kubernetes.io/pvc-protection`` finalizer (so the
        API server removes it), and a claim that is gone takes its folder with it."""
        claims = self.controller.get("/api/v1/persistentvolumeclaims")["items"]
        for claim in claims:
            meta = claim["metadata"]
            if not meta.get("deletionTimestamp") or PVC_PROTECTION not in meta.get("finalizers", []):
                continue
            pods = self.controller.get(f"/api/v1/namespaces/{meta['namespace']}/pods")["items"]
            if any(
                meta["name"] == volume.get("persistentVolumeClaim", {}).get("claimName")
                and pod["status"].get("phase") not in ("Succeeded", "Failed")
                for pod in pods
                for volume in pod["spec"].get("volumes", [])
            ):
                continue
            meta["finalizers"] = [f for f in meta["finalizers"] if f != PVC_PROTECTION]
            with contextlib.suppress(ApiError):  # changed or gone meanwhile: the next round sees it again
                self.controller.request(
                    "PUT",
                    f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}",
                    claim,
                )
        folder = self.config.root / "claims"
        if not folder.is_dir():
            return
        alive = {
            claim_dir(self.config.root, c["metadata"]["namespace"], c["metadata"]["name"]) for c in claims
        }
        for namespace in folder.iterdir():
            for claim_folder in namespace.iterdir():
                if claim_folder not in alive:
                    shutil.rmtree(claim_folder, ignore_errors=True)

    def runner(self, namespace: str, name: str) -> PodRunner | None:
        with self._lock:
            for runner in self.runners.values():
                if (runner.namespace, runner.name) == (namespace, name) and not runner.removed.is_set():
                    return runner
        return None

    def stop(self) -> None:
        """Stop every pod's containers (their grace periods), then the log server."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.abandoned = True
            runner.deleting.set()
        for runner in runners:
            runner.join(timeout=self.config.max_grace_seconds + 5)
        self._logs.stop()
        for api in (self.api, self.scheduler, self.controller):
            api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the llm-etl development cluster's node agent")
    parser.add_argument("config", type=Path, help="the node's configuration (JSON)")
    args = parser.parse_args(argv)
    agent = NodeAgent(NodeConfig.from_json(args.config.read_text()))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    agent.start()
    print(f"dev node {agent.config.name}: ready", flush=True)
    stopped.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
