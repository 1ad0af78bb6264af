"""FakeCluster: the API server on a local port (uvicorn in a thread) and its kubelet, with a kubeconfig."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from tests.e2e.fake_kubernetes.api import build_app
from tests.e2e.fake_kubernetes.kubelet import Kubelet, KubeletConfig
from tests.e2e.fake_kubernetes.store import Store


class FakeCluster:
    """Start with ``with FakeCluster(...) as cluster:``; talk to it with :meth:`kubeconfig`."""

    def __init__(
        self,
        root: Path,
        commands: dict[str, list[str]],
        *,
        namespace: str = "default",
        claims: dict[str, Path] | None = None,
        image_volumes: dict[str, Path] | None = None,
        max_log_bytes: int | None = None,
    ) -> None:
        self.namespace = namespace
        self.store = Store()
        self.kubelet = Kubelet(
            self.store,
            KubeletConfig(
                root=root,
                commands=commands,
                claims=claims or {},
                image_volumes=image_volumes or {},
                max_log_bytes=max_log_bytes,
            ),
        )
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            build_app(self.store, self.kubelet),
            log_level="warning",
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._socket])),
            name="fake-kube-apiserver",
            daemon=True,
        )

    def __enter__(self) -> FakeCluster:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Kubernetes API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kubelet.shutdown()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": self.namespace}}
            ],
            "current-context": "fake",
        }

    def airflow_connection(self) -> str:
        """An ``AIRFLOW_CONN_*`` value for a ``kubernetes`` connection to this cluster."""
        return json.dumps(
            {
                "conn_type": "kubernetes",
                "extra": {"kube_config": self.kubeconfig(), "namespace": self.namespace},
            }
        )

    def leftovers(self) -> dict[str, list[str]]:
        """What the cluster still holds: pods, Secrets, live container processes and node folders."""
        root = self.kubelet.config.root
        return {
            "pods": [p["metadata"]["name"] for p in self.store.list("pods", None)],
            "secrets": [s["metadata"]["name"] for s in self.store.list("secrets", None)],
            "claims": [c["metadata"]["name"] for c in self.store.list("persistentvolumeclaims", None)],
            "processes": self.kubelet.running_processes(),
            "node_files": sorted(  # os.walk, unlike rglob, passes over a folder deleted while it walks
                str(Path(folder, name).relative_to(root))
                for folder, _, names in os.walk(root)
                for name in names
            ),
        }

    def wait_until_empty(self, timeout: float = 30) -> dict[str, list[str]]:
        """Wait for terminating pods to go (graceful deletion); return what is left after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = {kind: names for kind, names in self.leftovers().items() if names}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)
