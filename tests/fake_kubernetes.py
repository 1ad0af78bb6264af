"""The unit tests' one in-memory stand-in for the Kubernetes API clients (CoreV1Api's Secret, pod, log and
claim calls, NetworkingV1Api's policies): no API server runs in a unit test. The integration and e2e tests
use the real control plane."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from kubernetes.client.exceptions import ApiException


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class LogResponse:
    """urllib3's HTTPResponse as a streamed pod log: chunks of odd sizes; closed and released."""

    def __init__(self, data: bytes, chunk: int = 333) -> None:
        self.data, self.chunk = data, chunk
        self.closed = self.released = False

    def stream(self, amount: int) -> Any:
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start : start + self.chunk]

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class FakeCoreV1:
    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            "secrets": {},
            "pods": {},
            "claims": {},
            "network_policies": {},
        }
        self.deleted: list[tuple[str, str]] = []
        # claims being deleted, as a finalizer holds them: name -> reads they still answer, Terminating
        self.terminating_claims: dict[str, int] = {}
        self.claim_release_reads = 0  # > 0: a deleted claim stays, Terminating, for that many reads
        self.log_reads: list[tuple[str, str, dict[str, Any]]] = []
        self.last_log_response: LogResponse | None = None

    def _create(
        self, kind: str, namespace: str, body: dict[str, Any], created: datetime | None = None
    ) -> None:
        key = (namespace, body["metadata"]["name"])
        if kind == "claims" and key[1] in self.terminating_claims:
            raise ApiException(status=409, reason="AlreadyExists")  # the API's answer while it terminates
        if key in self.objects[kind]:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[kind][key] = {**body, "created": created or datetime.now(UTC)}

    def _list(self, kind: str, namespace: str, label_selector: str = "") -> SimpleNamespace:
        items = [
            SimpleNamespace(
                metadata=SimpleNamespace(
                    name=name,
                    labels=obj["metadata"].get("labels", {}),
                    annotations=obj["metadata"].get("annotations"),
                    creation_timestamp=obj["created"],
                ),
                status=SimpleNamespace(phase=obj.get("phase")),
            )
            for (ns, name), obj in sorted(self.objects[kind].items())
            if ns == namespace and _matches(obj["metadata"].get("labels", {}), label_selector)
        ]
        return SimpleNamespace(items=items)

    def _delete(self, kind: str, name: str, namespace: str, **_: Any) -> None:
        if self.objects[kind].pop((namespace, name), None) is None:
            raise ApiException(status=404, reason="NotFound")
        self.deleted.append((kind, name))

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self._create("secrets", namespace, body)

    def list_namespaced_secret(self, namespace: str, label_selector: str = "") -> SimpleNamespace:
        return self._list("secrets", namespace, label_selector)

    def delete_namespaced_secret(self, name: str, namespace: str, **kwargs: Any) -> None:
        self._delete("secrets", name, namespace, **kwargs)

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        created: datetime | None = None,
        phase: str = "Succeeded",
        log: bytes = b"",
        annotations: dict[str, str] | None = None,
    ) -> None:
        metadata = {"name": name, "labels": labels, "annotations": annotations}
        self._create("pods", namespace, {"metadata": metadata}, created)
        self.objects["pods"][(namespace, name)].update(phase=phase, log=log)

    def read_namespaced_secret(self, name: str, namespace: str) -> SimpleNamespace:
        try:
            return SimpleNamespace(data=self.objects["secrets"][(namespace, name)]["data"])
        except KeyError:
            raise ApiException(status=404, reason="NotFound") from None

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> LogResponse:
        """The pod's log, streamed (``_preload_content=False``, as every reader here asks)."""
        assert kwargs["_preload_content"] is False
        self.log_reads.append((name, namespace, kwargs))
        self.last_log_response = LogResponse(self.objects["pods"][(namespace, name)]["log"])
        return self.last_log_response

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> SimpleNamespace:
        return self._list("pods", namespace, label_selector)

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> None:
        self._delete("pods", name, namespace, **kwargs)

    def create_namespaced_persistent_volume_claim(self, namespace: str, body: dict[str, Any]) -> None:
        self._create("claims", namespace, body)

    def list_namespaced_persistent_volume_claim(
        self, namespace: str, label_selector: str = ""
    ) -> SimpleNamespace:
        return self._list("claims", namespace, label_selector)

    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str) -> SimpleNamespace:
        if name in self.terminating_claims:
            self.terminating_claims[name] -= 1
            if self.terminating_claims[name] < 0:
                del self.terminating_claims[name]
                self.objects["claims"].pop((namespace, name), None)
        if (namespace, name) not in self.objects["claims"]:
            raise ApiException(status=404, reason="NotFound")
        deleting = datetime.now(UTC) if name in self.terminating_claims else None
        return SimpleNamespace(metadata=SimpleNamespace(name=name, deletion_timestamp=deleting))

    def delete_namespaced_persistent_volume_claim(self, name: str, namespace: str, **kwargs: Any) -> None:
        if self.claim_release_reads and (namespace, name) in self.objects["claims"]:
            self.terminating_claims[name] = self.claim_release_reads
            self.deleted.append(("claims", name))
            return
        self._delete("claims", name, namespace, **kwargs)

    def secret_bytes(self, namespace: str, name: str, key: str) -> bytes:
        return base64.b64decode(self.objects["secrets"][(namespace, name)]["data"][key])

    # NetworkingV1Api's calls, on the same store (the backend takes this fake for both APIs)
    def create_namespaced_network_policy(self, namespace: str, body: dict[str, Any]) -> None:
        self._create("network_policies", namespace, body)

    def list_namespaced_network_policy(self, namespace: str, label_selector: str = "") -> SimpleNamespace:
        return self._list("network_policies", namespace, label_selector)

    def delete_namespaced_network_policy(self, name: str, namespace: str, **kwargs: Any) -> None:
        self._delete("network_policies", name, namespace, **kwargs)
