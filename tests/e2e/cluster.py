"""The e2e tests' view of the development cluster (a real kube-apiserver and etcd, a kubelet with containerd):
what the API holds, what the node still runs, and the pods and events a run produced, seen through the admin
identity.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from llm_etl_dev.cluster import DevCluster, NodeOptions
from llm_etl_dev.cluster.api import ApiError, KubeApi
from llm_etl_dev.cluster.real_node import RealNodePaths, running_containers
from llm_etl_dev.object_store import S3Account
from llm_etl_provider.contract.layout import LABEL_COMPONENT


class Recorder(threading.Thread):
    """Every object of a kind (``pods``, ``secrets``) the namespace has held while recording, as the API
    served it."""

    def __init__(self, admin: KubeApi, namespace: str, kind: str, group: str = "/api/v1") -> None:
        super().__init__(name=f"{kind}-recorder", daemon=True)
        self.admin = admin
        self.namespace = namespace
        self.kind = kind
        self.group = group
        self.objects: dict[str, dict[str, Any]] = {}  # by uid, the latest version seen
        self._stopping = threading.Event()

    def run(self) -> None:
        version = "0"
        while not self._stopping.is_set():
            try:
                for event in self.admin.watch(
                    f"{self.group}/namespaces/{self.namespace}/{self.kind}", version, timeout=2
                ):
                    item = event["object"]
                    version = item["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.objects[item["metadata"]["uid"]] = item
            except ApiError:
                version = "0"  # expired (410 Gone): start again from the current objects
            except (httpx.HTTPError, ValueError):
                time.sleep(0.2)

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def is_enrichment_pod(pod: dict[str, Any]) -> bool:
    """Whether ``pod`` enriches a shard (the model-cache pod does not)."""
    return (pod["metadata"].get("labels") or {}).get(LABEL_COMPONENT) == "enrichment"


class ProviderCluster:
    """A :class:`DevCluster` that runs the provider's pods, with the checks the e2e tests make on it."""

    def __init__(self, state: Path, namespace: str, node: NodeOptions, images: dict[str, Any]) -> None:
        self.dev = DevCluster(state, namespace=namespace, node=node)
        self.images = images  # name -> the reference the pods name
        self.namespace = namespace
        self.admin: KubeApi
        self.baseline: dict[str, list[str]] = {}  # what the cluster held before the tests: not a leftover

    @contextlib.contextmanager
    def running(self) -> Iterator[ProviderCluster]:
        self.dev.up()
        try:
            with self.dev.admin() as admin:
                self.admin = admin
                self.recorder = Recorder(admin, self.namespace, "pods")
                self.secrets = Recorder(admin, self.namespace, "secrets")
                self.policies = Recorder(
                    admin, self.namespace, "networkpolicies", "/apis/networking.k8s.io/v1"
                )
                recorders = (self.recorder, self.secrets, self.policies)
                for recorder in recorders:
                    recorder.start()
                try:
                    yield self
                finally:
                    for recorder in recorders:
                        recorder.stop()
        finally:
            self.dev.down()

    def airflow_connection(self) -> str:
        return self.dev.airflow_connection()

    # -- what the API holds --------------------------------------------------------------------------

    def path(self, kind: str, name: str = "") -> str:
        return f"/api/v1/namespaces/{self.namespace}/{kind}" + (f"/{name}" if name else "")

    def names(self, kind: str) -> list[str]:
        return sorted(item["metadata"]["name"] for item in self.admin.get(self.path(kind))["items"])

    def events(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.admin.get(self.path("events"))["items"]
        return items

    def started_containers(self) -> list[tuple[str, str]]:
        """``(pod, container)`` of every container the kubelet reported started (its ``Started`` events)."""
        return [
            (e["involvedObject"]["name"], e["involvedObject"].get("fieldPath", "").split("{")[-1].rstrip("}"))
            for e in self.events()
            if e["reason"] == "Started"
        ]

    def created_pods(self) -> list[dict[str, Any]]:
        """The pods created since the last :meth:`forget_pods`, as last seen."""
        return list(self.recorder.objects.values())

    def enrichment_pods(self) -> list[dict[str, Any]]:
        """The enrichment pods (a shard's) among :meth:`created_pods`: not the model-cache pod."""
        return [pod for pod in self.created_pods() if is_enrichment_pod(pod)]

    def worker_running(self) -> bool:
        """Whether the worker (``base``) of an enrichment pod runs on the node."""
        workers = {f"{pod['metadata']['name']}/base" for pod in self.enrichment_pods()}
        return any(entry in workers for entry in self.running_containers())

    def forget_pods(self) -> None:
        self.recorder.objects.clear()

    def created_secrets(self) -> list[dict[str, Any]]:
        """The Secrets created since the cluster started, as last seen (data included)."""
        return list(self.secrets.objects.values())

    def s3(self) -> S3Account:
        """The dev cluster's S3 server."""
        return self.dev.s3()

    def forget_events(self, pods: set[str]) -> None:
        """Drop the events of ``pods``, so that the next run in the module counts its own."""
        for event in self.events():
            if event["involvedObject"]["name"] in pods:
                with contextlib.suppress(ApiError):
                    self.admin.delete(self.path("events", event["metadata"]["name"]))

    # -- what the node runs --------------------------------------------------------------------------

    def running_containers(self) -> list[str]:
        """The containers whose processes the node's containerd runs, as ``pod/container``."""
        return running_containers(self.node.socket)

    @property
    def node(self) -> RealNodePaths:
        return RealNodePaths(self.dev.node_root)

    def volume(self, pod: dict[str, Any], name: str) -> Path:
        """Where the node keeps the pod's volume ``name``: the kubelet's folder of an emptyDir, the
        provisioner's folder of a claim."""
        for volume in pod["spec"].get("volumes", []):
            if volume["name"] == name and "persistentVolumeClaim" in volume:
                claim = self.admin.get(
                    self.path("persistentvolumeclaims", volume["persistentVolumeClaim"]["claimName"])
                )
                bound = self.admin.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
                return Path(bound["spec"]["hostPath"]["path"])
        uid = str(pod["metadata"]["uid"])
        return self.node.kubelet_root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / name

    def remember_baseline(self) -> None:
        """Take what the cluster holds now (the model's Secret and claim, say) as its empty state."""
        self.baseline = self._holdings()

    def leftovers(self) -> dict[str, list[str]]:
        """What the cluster holds beyond its baseline: pods, Secrets, claims and their volumes, containers
        still running, the kubelet's pod folders and the volumes' folders."""
        return {
            kind: [name for name in names if name not in self.baseline.get(kind, [])]
            for kind, names in self._holdings().items()
        }

    def _holdings(self) -> dict[str, list[str]]:
        folders = (self.node.kubelet_root / "pods", self.dev.volume_root)
        return {
            "pods": self.names("pods"),
            "secrets": self.names("secrets"),
            "claims": self.names("persistentvolumeclaims"),
            "network_policies": sorted(
                item["metadata"]["name"]
                for item in self.admin.get(
                    f"/apis/networking.k8s.io/v1/namespaces/{self.namespace}/networkpolicies"
                )["items"]
            ),
            "volumes": sorted(
                item["metadata"]["name"] for item in self.admin.get("/api/v1/persistentvolumes")["items"]
            ),
            "processes": self.running_containers(),
            "node_folders": sorted(  # a pod's folder on the node, a claim's volume
                str(Path(top, name)) for top in folders if top.is_dir() for name in os.listdir(top)
            ),
        }

    def wait_until_empty(self, timeout: float = 30) -> dict[str, list[str]]:
        """Wait for terminating pods to go (graceful deletion); return what is left after ``timeout``, beyond
        the baseline."""
        deadline = time.monotonic() + timeout
        while True:
            left = {kind: names for kind, names in self.leftovers().items() if names}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def describe(self) -> str:
        """The namespace's pods and events, for an assertion's message."""
        pods = [
            (p["metadata"]["name"], p["status"].get("phase"))
            for p in self.admin.get(self.path("pods"))["items"]
        ]
        events = [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in self.events()]
        return json.dumps({"pods": pods, "events": events[-30:]})
