"""A real Kubernetes cluster on this machine to try the provider on: etcd, kube-apiserver and one real node.

``DevCluster(state).up()`` starts etcd and kube-apiserver (built from source by ``scripts/build-kube.sh``)
with TLS, ``--authorization-mode=Node,RBAC`` and the default admission plugins (PodSecurity among them), then
kube-controller-manager, kube-scheduler and the node of :mod:`llm_etl_dev.cluster.real_node`
(kubelet, containerd with runc and a CNI bridge, running the pod's own images loaded from OCI archives), the
volume provisioner of :mod:`llm_etl_dev.cluster.provisioner` (the default StorageClass), and an S3
server (SeaweedFS, built by ``scripts/build-seaweedfs.sh``; :mod:`llm_etl_dev.object_store`) with a
bucket ``llm-etl``. It prepares the run namespace with the objects of :mod:`llm_etl_provider.pod.rbac`,
as ``llm-etl render-rbac --user llm-etl-airflow`` prints them (the namespace enforcing the restricted Pod
Security Standard, the Role bound to the ``airflow`` identity), and the ``llm-etl-models`` claim bound to a
read-only volume of the bundled model. ``down()`` stops them in reverse order and leaves no process, mount,
network namespace or cgroup behind. It needs root (containerd, runc, the bridge); ``up(node=False)`` does
not: it starts etcd and kube-apiserver alone, the namespace prepared, in seconds, for what the API server
alone decides (authorization, admission).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from llm_etl_dev.builds import find_built
from llm_etl_dev.cluster.api import ApiError, KubeApi
from llm_etl_dev.cluster.pki import CertificateAuthority, KeyPair, service_account_key
from llm_etl_dev.cluster.provisioner import ProvisionerConfig, storage_class
from llm_etl_dev.cluster.real_node import (
    REAL_NODE_NAME,
    RealNodePaths,
    ctr,
    kubelet_config,
    load_images,
    netns_names,
    node_address,
    remove_node_leftovers,
    stop_containers,
    write_files,
)
from llm_etl_dev.object_store import S3Account, create_bucket, find_weed, seaweedfs_command
from llm_etl_dev.processes import pid_alive, stop_process
from llm_etl_provider.backends import EXAMPLE_NAMESPACE
from llm_etl_provider.backends.llama_server import bundled_model, free_port
from llm_etl_provider.pod.rbac import rbac_manifests

KUBE_BIN_ENV = "LLM_ETL_KUBE_BIN"
NAMESPACE = EXAMPLE_NAMESPACE
MODEL_CLAIM = "llm-etl-models"  # bound to the bundled model's folder: [llm_etl] model_source = pvc
AIRFLOW_USER = "llm-etl-airflow"
SERVICE_RANGE = "10.0.0.0/24"
API_SERVER_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_RANGE, in the API server's certificate
START_TIMEOUT = 60.0


class DevClusterError(RuntimeError):
    """The development cluster could not start or stop; the message says why and where its logs are."""


def airflow_rbac(namespace: str) -> list[dict[str, Any]]:
    """What ``llm-etl render-rbac --namespace NAMESPACE --user llm-etl-airflow`` prints: the namespace, the
    provider's Role and its binding to the ``airflow`` identity (and the ServiceAccount a user would get)."""
    return rbac_manifests(namespace, users=(AIRFLOW_USER,))


def collection_path(manifest: dict[str, Any]) -> str:
    """The API path of the collection of ``manifest``, an object of a kind whose plural is its name in lower
    case with an ``s`` (Namespace, ServiceAccount, Role, RoleBinding)."""
    group_version = manifest["apiVersion"]
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    namespace = manifest["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{manifest['kind'].lower()}s"


def find_kube_binaries() -> Path:
    """The folder of the control plane's and the node's programs: $LLM_ETL_KUBE_BIN, or
    ``LLM_ETL_KUBE_NODE=1 scripts/build-kube.sh``'s cache."""
    built_by = "LLM_ETL_KUBE_NODE=1 scripts/build-kube.sh (about 15 minutes, cached)"
    programs = ["kube-apiserver", "etcd", "kubelet", "kube-scheduler", "kube-controller-manager"]
    return find_built(KUBE_BIN_ENV, "kube-*-etcd-*/bin", programs, error=DevClusterError, built_by=built_by)


@dataclass
class NodeOptions:
    """What the node runs and how: the pod's images, as OCI archives (``scripts/build-images.sh --oci-dir``)
    loaded into its containerd, and the kubelet's ``containerLogMaxSize`` in bytes (default 10 MiB; given,
    the kubelet checks the logs every 3 s instead of 10)."""

    image_archives: list[Path] = field(default_factory=list)
    max_log_bytes: int | None = None


class DevCluster:
    """etcd, kube-apiserver, the node and its controllers as processes, their state (certificates,
    kubeconfigs, data, logs) in ``state``."""

    def __init__(self, state: Path, *, namespace: str = NAMESPACE, node: NodeOptions | None = None) -> None:
        self.state = state.resolve()
        self.namespace = namespace
        self.node_options = node or NodeOptions()
        self.pki = self.state / "pki"
        self.logs = self.state / "logs"
        self.node_root = self.state / "node"
        self.volume_root = self.state / "volumes"  # the provisioner's folders, one per claim
        self.object_root = self.state / "s3"
        self.admin_kubeconfig = self.state / "admin.kubeconfig"
        self.airflow_kubeconfig = self.state / "airflow.kubeconfig"
        self._state_file = self.state / "cluster.json"
        self._netns_before: set[str] = netns_names()
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # what this object started, to reap

    # -- what up prints, and what the tests use ------------------------------------------------------

    @property
    def server(self) -> str:
        return str(self._recorded()["server"])

    def environment(self) -> dict[str, str]:
        """``KUBECONFIG``, ``AIRFLOW_KUBECONFIG``, ``NAMESPACE`` and the S3 server's ``AWS_*``, as ``up``
        prints them."""
        return {
            "KUBECONFIG": str(self.admin_kubeconfig),
            "AIRFLOW_KUBECONFIG": str(self.airflow_kubeconfig),
            "NAMESPACE": self.namespace,
            **self.s3().environment(),
        }

    def s3(self) -> S3Account:
        """The S3 server's endpoint and its one account."""
        if (account := self._recorded()["s3"]) is None:
            raise DevClusterError(f"the development cluster in {self.state} was started without its node")
        return S3Account(**account)

    def admin(self) -> KubeApi:
        """A client with the cluster-admin identity (close it after use)."""
        pair = KeyPair(self.pki / "admin.crt", self.pki / "admin.key")
        return KubeApi(self.server, self.pki / "ca.crt", pair.cert, pair.key)

    def airflow_connection(self) -> str:
        """An ``AIRFLOW_CONN_*`` value for a ``kubernetes`` connection as the ``airflow`` identity."""
        config = yaml.safe_load(self.airflow_kubeconfig.read_text())
        return json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config": config, "namespace": self.namespace}}
        )

    def is_up(self) -> bool:
        return self._state_file.exists() and all(pid_alive(pid) for pid in self._recorded()["pids"].values())

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded: dict[str, Any] = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            raise DevClusterError(f"no development cluster is up in {self.state}") from None
        return recorded

    # -- up ------------------------------------------------------------------------------------------

    def up(self, *, node: bool = True) -> None:
        """Start everything and return once the API answers, the namespace is ready and the node is Ready;
        ``node=False``: etcd and kube-apiserver only (no node, controllers nor S3 server)."""
        if self._state_file.exists():
            if self.is_up():
                return
            self.down()
        binaries = find_kube_binaries()
        weed = find_weed() if node else None
        for folder in (self.pki, self.state / "etcd", self.node_root, self.volume_root, self.object_root):
            shutil.rmtree(folder, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kubelet")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        # pods have network namespaces of their own: they reach the store on the node's address
        address = node_address() if node else "127.0.0.1"
        weed_argv, account = seaweedfs_command(weed, self.object_root, address) if weed else ([], None)
        pids: dict[str, int] = {}
        self._write_state(server, pids, account)
        try:
            if account is not None:
                # the S3 server starts first: its gateway takes a few seconds, the API server's start overlaps
                pids["s3"] = self._spawn("seaweedfs", weed_argv)
                self._write_state(server, pids, account)
            self._certificates()
            pids["etcd"] = self._spawn("etcd", [str(binaries / "etcd"), *self._etcd_flags(ports)])
            self._write_state(server, pids, account)
            etcd_health = f"http://127.0.0.1:{ports['etcd']}/health"
            self._wait("etcd", lambda: httpx.get(etcd_health, timeout=2).is_success, pids["etcd"])
            pids["kube-apiserver"] = self._spawn(
                "kube-apiserver", [str(binaries / "kube-apiserver"), *self._apiserver_flags(ports)]
            )
            self._write_state(server, pids, account)
            with self.admin() as admin:
                self._wait("kube-apiserver", admin.healthy, pids["kube-apiserver"])
                self._write_kubeconfigs(server)
                self._prepare_namespace(admin)
                if account is not None:
                    self._start_node(admin, server, binaries, (address, ports["kubelet"]), pids, account)
            if account is not None:
                create_bucket(account, lambda: pid_alive(pids["s3"]), self.logs / "seaweedfs.log")
        except BaseException:
            self.down()
            raise

    def _write_state(self, server: str, pids: dict[str, int], account: S3Account | None) -> None:
        self._state_file.touch(mode=0o600)  # it holds the S3 account's secret
        self._state_file.write_text(
            json.dumps(
                {
                    "server": server,
                    "namespace": self.namespace,
                    "pids": pids,
                    "s3": dataclasses.asdict(account) if account else None,
                    "netns_before": sorted(self._netns_before),
                }
            )
        )

    def _start_node(
        self,
        admin: KubeApi,
        server: str,
        binaries: Path,
        kubelet_at: tuple[str, int],
        pids: dict[str, int],
        account: S3Account,
    ) -> None:
        """containerd (with the pod's images), kube-controller-manager, kube-scheduler, the volume
        provisioner and the kubelet, until the node is Ready; the models claim bound to a volume of the
        bundled model."""
        if os.geteuid() != 0:
            raise DevClusterError("the node runs containerd and runc, which need root: run `up` as root")
        paths = RealNodePaths(self.node_root)
        address, port = kubelet_at  # the node's address and the kubelet's port
        ca = self._ca()
        ca.issue("real-node", f"system:node:{REAL_NODE_NAME}", organizations=("system:nodes",))
        ca.issue("real-node-serving", f"system:node:{REAL_NODE_NAME}", server_hosts=(address,), client=False)
        ca.issue("controller-manager", "system:kube-controller-manager")
        kubelet = kubelet_config(
            paths, ca=self.pki / "ca.crt", address=address, port=port,
            serving=(self.pki / "real-node-serving.crt", self.pki / "real-node-serving.key"),
            max_log=f"{self.node_options.max_log_bytes or 10 << 20}",
            log_check="3s" if self.node_options.max_log_bytes else "10s",  # a small limit: reached in seconds
        )  # fmt: skip
        files = write_files(
            paths,
            kubelet=kubelet,
            kubeconfigs={
                name: self._kubeconfig(server, identity)
                for name, identity in (
                    ("kubelet", "real-node"),
                    ("scheduler", "scheduler"),
                    ("controller-manager", "controller-manager"),
                )
            },
        )
        pids["containerd"] = self._spawn(
            "containerd", ["containerd", "--config", str(files["containerd-config"])]
        )
        self._write_state(server, pids, account)
        self._wait(
            "containerd", lambda: ctr(paths.socket, "version", timeout=10).returncode == 0, pids["containerd"]
        )
        load_images(paths.socket, self.node_options.image_archives)
        pids["kube-controller-manager"] = self._spawn(
            "kube-controller-manager",
            [str(binaries / "kube-controller-manager"), f"--kubeconfig={files['controller-manager']}",
             "--use-service-account-credentials=true",
             f"--service-account-private-key-file={self.pki / 'sa.key'}",
             f"--root-ca-file={self.pki / 'ca.crt'}",
             "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}"],
        )  # fmt: skip
        pids["kube-scheduler"] = self._spawn(
            "kube-scheduler",
            [str(binaries / "kube-scheduler"), f"--kubeconfig={files['scheduler']}", "--leader-elect=false",
             "--bind-address=127.0.0.1", f"--secure-port={free_port()}"],
        )  # fmt: skip
        admin.ensure("/apis/storage.k8s.io/v1/storageclasses", storage_class())
        provisioner = self.state / "provisioner.json"
        ProvisionerConfig(
            server=server, ca=str(self.pki / "ca.crt"), cert=str(self.pki / "admin.crt"),
            key=str(self.pki / "admin.key"), root=str(self.volume_root),
        ).write(provisioner)  # fmt: skip
        pids["provisioner"] = self._spawn(
            "provisioner",
            [sys.executable, "-m", "llm_etl_dev.cluster.provisioner", str(provisioner)],
        )
        pids["kubelet"] = self._spawn(
            "kubelet",
            [str(binaries / "kubelet"), f"--config={files['kubelet-config']}",
             f"--kubeconfig={files['kubelet']}",
             f"--hostname-override={REAL_NODE_NAME}", f"--node-ip={address}",
             f"--root-dir={paths.kubelet_root}", f"--cert-dir={paths.root / 'kubelet-pki'}"],
        )  # fmt: skip
        self._write_state(server, pids, account)
        # the models claim, bound to a volume of the bundled model's folder (read-only by the claim's mode)
        admin.ensure(
            "/api/v1/persistentvolumes",
            {
                "metadata": {"name": f"{self.namespace}-{MODEL_CLAIM}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "hostPath": {"path": str(bundled_model().parent)},
                    "storageClassName": "",
                    "claimRef": {"namespace": self.namespace, "name": MODEL_CLAIM},
                    "persistentVolumeReclaimPolicy": "Retain",
                },
            },
        )
        self._wait_node(admin, pids["kubelet"])

    def _ca(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.pki)

    def _certificates(self) -> None:
        ca = CertificateAuthority(self.pki)
        hosts = ("127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", API_SERVER_SERVICE_IP)  # fmt: skip
        ca.issue("apiserver", "kube-apiserver", server_hosts=hosts, client=False)
        ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)
        )
        ca.issue("admin", "llm-etl-admin", organizations=("system:masters",))
        ca.issue("airflow", AIRFLOW_USER)
        ca.issue("scheduler", "system:kube-scheduler")
        service_account_key(self.pki)

    def _etcd_flags(self, ports: dict[str, int]) -> list[str]:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            "--name=dev", f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=dev={peer}", "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # the data is thrown away with the cluster
            "--log-level=warn",
        ]  # fmt: skip

    def _apiserver_flags(self, ports: dict[str, int]) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            # the default reconciler refuses a loopback address for the `kubernetes` Service every few seconds
            "--endpoint-reconciler-type=none",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # added to the defaults, PodSecurity among them
            # so that Pod Security, not the API server's own switch, is what refuses a privileged pod
            "--allow-privileged=true",
        ]  # fmt: skip

    def _spawn(self, name: str, argv: list[str]) -> int:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(  # outlives `up`: its own session, stopped by `down`
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._children[process.pid] = process
        return process.pid

    def _wait(self, what: str, check: Any, pid: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not pid_alive(pid):
                raise DevClusterError(f"{what} exited while starting; see {self.logs}")
            with contextlib.suppress(httpx.HTTPError, ApiError, OSError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise DevClusterError(f"{what} was not ready after {START_TIMEOUT:.0f} s; see {self.logs}")
            time.sleep(0.2)

    def _write_kubeconfigs(self, server: str) -> None:
        for path, name in ((self.admin_kubeconfig, "admin"), (self.airflow_kubeconfig, "airflow")):
            path.write_text(yaml.safe_dump(self._kubeconfig(server, name), sort_keys=False))
            path.chmod(0o600)

    def _kubeconfig(self, server: str, identity: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "llm-etl-dev",
                    "cluster": {"server": server, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": identity,
                    "user": {
                        "client-certificate": str(self.pki / f"{identity}.crt"),
                        "client-key": str(self.pki / f"{identity}.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": f"{identity}@llm-etl-dev",
                    "context": {"cluster": "llm-etl-dev", "user": identity, "namespace": self.namespace},
                }
            ],
            "current-context": f"{identity}@llm-etl-dev",
        }

    def _prepare_namespace(self, admin: KubeApi) -> None:
        namespace = self.namespace
        for manifest in airflow_rbac(namespace):
            admin.ensure(collection_path(manifest), manifest)
        base = f"/api/v1/namespaces/{namespace}"
        # made now, not seconds later by kube-controller-manager (which starts after): a pod naming a
        # ServiceAccount that does not exist yet is refused
        admin.ensure(base + "/serviceaccounts", {"metadata": {"name": "default"}})
        models: dict[str, Any] = {
            "metadata": {"name": MODEL_CLAIM},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                # bound to the volume of the bundled model that the node's start makes
                "storageClassName": "",
                "volumeName": f"{self.namespace}-{MODEL_CLAIM}",
            },
        }
        admin.ensure(base + "/persistentvolumeclaims", models)

    def _wait_node(self, admin: KubeApi, pid: int) -> None:
        """Wait until the node is Ready and kube-controller-manager's node lifecycle controller has taken its
        not-ready taint away."""

        def ready() -> bool:
            node = admin.get(f"/api/v1/nodes/{REAL_NODE_NAME}")
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            taints = node["spec"].get("taints", [])
            not_ready = any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)
            return conditions.get("Ready") == "True" and not not_ready

        self._wait("the node", ready, pid)

    # -- down ----------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop the node (its pods with it), its controllers, then kube-apiserver, then etcd; keep only the
        logs."""
        if not self._state_file.exists():
            return
        recorded = self._recorded()
        pids = recorded["pids"]
        order = (
            "kubelet", "containerd", "provisioner", "kube-scheduler", "kube-controller-manager",
            "kube-apiserver", "etcd", "s3",
        )  # fmt: skip
        for name in order:  # the API server before etcd, or it hangs 10 s
            if name == "containerd" and name in pids and pid_alive(pids[name]):
                stop_containers(RealNodePaths(self.node_root).socket)  # the pods', after the kubelet
            if name in pids:
                stop_process(pids[name], 20, group=True)
                if (child := self._children.pop(pids[name], None)) is not None:
                    child.wait()
        if self.node_root.exists():
            remove_node_leftovers(RealNodePaths(self.node_root), set(recorded.get("netns_before", [])))
        for path in (
            self.pki,
            self.state / "etcd",
            self.node_root,
            self.volume_root,
            self.object_root,
            self.state / "provisioner.json",
        ):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for path in (self.admin_kubeconfig, self.airflow_kubeconfig, self._state_file):
            path.unlink(missing_ok=True)
