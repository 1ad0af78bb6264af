"""The development cluster's volume provisioner: claims of its default StorageClass become folders on the
node, as an external provisioner (rancher's local-path-provisioner, say) makes them on a one-node cluster.

kube-controller-manager's volume binder does the binding and the release; this process does only what an
external provisioner does: for a Pending claim of :data:`STORAGE_CLASS` it makes a folder and a ``hostPath``
volume whose ``claimRef`` names the claim, and for a volume it made whose claim is gone (``Released``, reclaim
policy ``Delete``) it removes the folder and the volume. kube-controller-manager's own hostPath provisioner
would make the folder ``0750`` and owned by root, which the pods' uid 65532 cannot write; these folders are
``0777`` (a development cluster's, on one machine).

Run as ``python -m llm_etl_dev.cluster.provisioner CONFIG`` by ``DevCluster.up``; CONFIG is a JSON
:class:`ProvisionerConfig`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from llm_etl_dev.cluster.api import ApiError, KubeApi

STORAGE_CLASS = "llm-etl-dev"
PROVISIONER = "llm-etl.dev/host-path"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
POLL_SECONDS = 0.5


def storage_class() -> dict[str, Any]:
    """The cluster's default StorageClass: claims that name no class get it (the DefaultStorageClass
    admission plugin)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


@dataclass(frozen=True)
class ProvisionerConfig:
    """Where the API server is, the identity to use, and the folder that holds the volumes."""

    server: str
    ca: str
    cert: str
    key: str
    root: str

    @classmethod
    def load(cls, path: Path) -> ProvisionerConfig:
        return cls(**json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def volume_for(claim: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The volume that serves ``claim`` from ``folder``, bound to it by ``claimRef``."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"],
            "hostPath": {"path": str(folder), "type": "Directory"},
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
        },
    }


def provision_once(api: KubeApi, root: Path) -> None:
    """One pass: a volume for every Pending claim of the class, and away with every released volume."""
    volumes = {pv["metadata"]["name"]: pv for pv in api.get("/api/v1/persistentvolumes")["items"]}
    for claim in api.get("/api/v1/persistentvolumeclaims")["items"]:
        spec, meta = claim["spec"], claim["metadata"]
        if (
            spec.get("storageClassName") != STORAGE_CLASS
            or spec.get("volumeName")
            or claim.get("status", {}).get("phase") != "Pending"
            or f"pvc-{meta['uid']}" in volumes
            or meta.get("deletionTimestamp")
        ):
            continue
        folder = root / f"{meta['namespace']}-{meta['name']}-{meta['uid']}"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        with contextlib.suppress(ApiError):  # made meanwhile by an earlier pass: 409
            api.post("/api/v1/persistentvolumes", volume_for(claim, folder))
    for name, volume in volumes.items():
        annotations = volume["metadata"].get("annotations") or {}
        if annotations.get(PROVISIONED_BY) != PROVISIONER or volume["status"].get("phase") != "Released":
            continue
        folder = Path(volume["spec"]["hostPath"]["path"])
        if folder.parent == root:
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(ApiError):
            api.delete(f"/api/v1/persistentvolumes/{name}")


def main(argv: list[str]) -> int:
    config = ProvisionerConfig.load(Path(argv[0]))
    root = Path(config.root)
    root.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with KubeApi(config.server, Path(config.ca), Path(config.cert), Path(config.key)) as api:
        while not stopping.is_set():
            try:
                provision_once(api, root)
            except (ApiError, httpx.HTTPError, OSError) as exc:
                print(f"provisioner: {exc}", file=sys.stderr, flush=True)
            stopping.wait(POLL_SECONDS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
