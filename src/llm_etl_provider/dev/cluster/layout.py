"""The dev node's configuration, and where it keeps pods, volumes and logs on this machine."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

NODE_ADDRESS = "127.0.0.1"


@dataclass
class NodeConfig:
    """How the node registers itself and turns containers and volumes into local things (JSON in a file)."""

    name: str
    root: Path
    server: str
    ca: Path
    node_cert: Path  # CN system:node:<name>, O system:nodes
    node_key: Path
    scheduler_cert: Path  # CN system:kube-scheduler: binds pods, reads claims
    scheduler_key: Path
    controller_cert: Path  # the pvc-protection controller's service account: releases deleted claims
    controller_key: Path
    serving_cert: Path  # the kubelet API's certificate, for NODE_ADDRESS
    serving_key: Path
    kubelet_port: int
    commands: dict[str, list[str]]
    claims: dict[str, Path] = field(default_factory=dict)  # "<namespace>/<claim>": a folder to mount as it
    image_volumes: dict[str, Path] = field(default_factory=dict)
    capacity: dict[str, str] = field(
        default_factory=lambda: {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "200Gi", "pods": "110"}
    )
    labels: dict[str, str] = field(default_factory=dict)
    max_grace_seconds: float = 10.0
    max_log_bytes: int | None = None  # rotate a container's log past this size, as containerLogMaxSize does

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        raw = json.loads(text)
        paths = ("root", "ca", "node_cert", "node_key", "scheduler_cert", "scheduler_key", "controller_cert")
        for key in (*paths, "controller_key", "serving_cert", "serving_key"):
            raw[key] = Path(raw[key])
        raw["claims"] = {k: Path(v) for k, v in raw.get("claims", {}).items()}
        raw["image_volumes"] = {k: Path(v) for k, v in raw.get("image_volumes", {}).items()}
        return cls(**raw)


# In every container's environment, as ``<pod>/<container>``: how a pod's processes are found on this machine.
CONTAINER_VARIABLE = "LLM_ETL_DEV_NODE_CONTAINER"


def claim_dir(root: Path, namespace: str, name: str) -> Path:
    """A claim's folder on the node: it lives as long as the PersistentVolumeClaim."""
    return root / "claims" / namespace / name


def pod_dir(root: Path, uid: str) -> Path:
    """A pod's folder on the node (volumes, the containers' working folders, logs), removed with the pod."""
    return root / "pods" / uid


def pod_volume_dir(root: Path, uid: str, volume: str) -> Path:
    return pod_dir(root, uid) / "volumes" / volume
