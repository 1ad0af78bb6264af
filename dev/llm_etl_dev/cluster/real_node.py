"""A real node for the development cluster: containerd with runc and the CNI bridge, kubelet, kube-scheduler
and kube-controller-manager (built by ``scripts/build-kube.sh`` with ``LLM_ETL_KUBE_NODE=1``), running the
pod's own images (``scripts/build-images.sh``, loaded from OCI archives: no registry).

The kubelet runs on this cgroup v1 host with ``failCgroupV1: false`` (Kubernetes 1.35+ refuses cgroup v1
otherwise), ``cgroupDriver: cgroupfs`` and no QoS cgroups; containerd 1.6 (Debian's) answers the kubelet's
``RuntimeConfig`` call with Unimplemented, which the kubelet logs and passes over. containerd's CRI gets
``restrict_oom_score_adj`` (no CAP_SYS_RESOURCE here: runc cannot lower the sandbox's OOM score) and the
overlayfs snapshotter (the native one copies the whole image into each container's writable layer, which the
kubelet counts as the container's ephemeral storage and evicts it for). The node's address is this machine's
first global IPv4 address: the kubelet refuses a loopback node IP; the API server reaches the kubelet there.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REAL_NODE_NAME = "llm-etl-real-node"
POD_SUBNET = "10.88.0.0/16"
BRIDGE = "llmetl0"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
SANDBOX_IMAGE = "localhost/llm-etl/pause:3.10"
CONTAINERD_NAMESPACE = "k8s.io"


def node_address() -> str:
    """This machine's first global IPv4 address (``ip -4 -o addr show scope global``)."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True
    ).stdout
    for line in shown.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    raise RuntimeError("the real node needs a non-loopback IPv4 address, and this machine has none")


def cni_bin_dir() -> str:
    for folder in CNI_BIN_DIRS:
        if Path(folder, "bridge").exists():
            return folder
    raise RuntimeError("no CNI plugins (apt-get install containernetworking-plugins)")


@dataclass
class RealNodePaths:
    """Where the real node keeps its configuration, state and logs: under ``root``."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni"


def containerd_config(paths: RealNodePaths) -> str:
    """containerd 1.6's configuration: CRI with runc, overlayfs, the CNI bridge, the local sandbox image."""
    root = paths.root / "containerd"
    return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
[grpc]
  address = "{paths.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir()}"
    conf_dir = "{paths.cni_conf}"
"""


def cni_config() -> dict[str, Any]:
    """A bridge network without masquerading (containerd wants an address; loopback alone is not enough)."""
    return {
        "cniVersion": "1.0.0",
        "name": "llm-etl",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(
    paths: RealNodePaths,
    *,
    ca: Path,
    serving: tuple[Path, Path],
    address: str,
    port: int,
    max_log: str,
    log_check: str = "10s",
) -> dict[str, Any]:
    """The kubelet's configuration; it rotates a container's log past ``max_log`` bytes, checking every
    ``log_check`` (3 s at least)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "podLogsDir": str(paths.pod_logs),
        "containerLogMaxSize": max_log,
        "containerLogMaxFiles": 5,
        "containerLogMonitorInterval": log_check,
        # emptyDir usage measured every 2 s (default 1 min), so that a folder over its sizeLimit is evicted in
        # seconds, as the tests need
        "volumeStatsAggPeriod": "2s",
        # this machine's disk and memory are shared with everything else: evict only when they are nearly out
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
    }


def mounts_under(root: Path) -> list[str]:
    """The mount points under ``root``, deepest first."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(root) or point.startswith(f"{root}/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_node_leftovers(paths: RealNodePaths, netns_before: set[str]) -> None:
    """What containerd, runc and the CNI plugins leave when they are stopped: mounts under the node's root,
    the network namespaces made since the node started, and the bridge."""
    for point in mounts_under(paths.root):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    netns = Path("/var/run/netns")
    if netns.is_dir():
        for entry in netns.iterdir():
            if entry.name.startswith("cni-") and entry.name not in netns_before:
                subprocess.run(["umount", "-l", str(entry)], capture_output=True, check=False)
                entry.unlink(missing_ok=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    remove_empty_cgroups(CONTAINERD_NAMESPACE)
    shutil.rmtree(paths.root, ignore_errors=True)


def remove_empty_cgroups(name: str, hierarchy: Path = Path("/sys/fs/cgroup")) -> None:
    """Remove the cgroup ``name`` that runc made under each controller (the containerd namespace's), with
    whatever it holds, deepest first, where no process is left in it (an empty cgroup's rmdir succeeds)."""
    for controller in hierarchy.iterdir() if hierarchy.is_dir() else []:
        top = controller / name
        if not top.is_dir():
            continue
        for folder in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def netns_names() -> set[str]:
    netns = Path("/var/run/netns")
    return {entry.name for entry in netns.iterdir()} if netns.is_dir() else set()


def ctr(
    socket: Path, *args: str, namespace: str = CONTAINERD_NAMESPACE, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``ctr`` against the containerd at ``socket``, in ``namespace``."""
    return subprocess.run(
        ["ctr", "--address", str(socket), "--namespace", namespace, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def load_images(socket: Path, archives: list[Path], namespace: str = CONTAINERD_NAMESPACE) -> None:
    """Import OCI archives into the containerd at ``socket`` (where the kubelet finds them: no pull)."""
    for archive in archives:
        done = ctr(
            socket, "images", "import", "--snapshotter", "overlayfs", str(archive), namespace=namespace
        )
        if done.returncode != 0:
            raise RuntimeError(f"cannot load {archive} into containerd: {done.stderr[-1000:]}")


def stop_containers(socket: Path, namespace: str = CONTAINERD_NAMESPACE) -> None:
    """Kill and delete every container of ``namespace`` in the containerd at ``socket``, so that stopping
    it leaves no process."""

    def tasks() -> list[str]:
        listed = ctr(socket, "tasks", "ls", namespace=namespace, timeout=30).stdout.splitlines()[1:]
        return [line for line in listed if line.split()]

    for line in tasks():
        ctr(socket, "tasks", "kill", "-s", "SIGKILL", line.split()[0], namespace=namespace, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any("RUNNING" in line for line in tasks()):
        time.sleep(0.2)
    for container in ctr(socket, "containers", "ls", "-q", namespace=namespace, timeout=30).stdout.split():
        ctr(socket, "tasks", "delete", "-f", container, namespace=namespace, timeout=30)
        ctr(socket, "containers", "delete", container, namespace=namespace, timeout=30)


_CONTAINER_NAMES: dict[str, str] = {}  # containerd id -> "pod/container" (labels never change)


def running_containers(socket: Path, namespace: str = CONTAINERD_NAMESPACE) -> list[str]:
    """The pods' containers whose processes run in the containerd at ``socket``, as ``pod/container`` (the
    kubelet's labels; the pods' sandboxes left out)."""
    found = []
    for line in ctr(socket, "tasks", "ls", namespace=namespace, timeout=30).stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3 or fields[2] != "RUNNING":
            continue
        if (name := _CONTAINER_NAMES.get(fields[0])) is None:
            info = ctr(socket, "containers", "info", fields[0], namespace=namespace, timeout=30)
            if info.returncode != 0:
                continue  # gone meanwhile
            labels = json.loads(info.stdout).get("Labels") or {}
            pod, container = labels.get("io.kubernetes.pod.name"), labels.get("io.kubernetes.container.name")
            name = _CONTAINER_NAMES[fields[0]] = f"{pod}/{container}" if pod and container else ""
        if name:
            found.append(name)
    return sorted(found)


def write_files(
    paths: RealNodePaths, *, kubelet: dict[str, Any], kubeconfigs: dict[str, dict[str, Any]]
) -> dict[str, Path]:
    """Write containerd's, the CNI's and the kubelet's configuration and the kubeconfigs; their paths."""
    for folder in (paths.root, paths.cni_conf, paths.kubelet_root, paths.pod_logs, paths.socket.parent):
        folder.mkdir(parents=True, exist_ok=True)
    written = {
        "containerd-config": paths.root / "containerd.toml",
        "kubelet-config": paths.root / "kubelet.yaml",
    }
    written["containerd-config"].write_text(containerd_config(paths))
    (paths.cni_conf / "10-llm-etl.conflist").write_text(json.dumps(cni_config()))
    written["kubelet-config"].write_text(yaml.safe_dump(kubelet, sort_keys=False))
    for name, config in kubeconfigs.items():
        path = paths.root / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        written[name] = path
    return written
