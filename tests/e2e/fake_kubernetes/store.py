"""The fake cluster's object store: pods, Secrets and events as the Kubernetes API serializes them."""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def rfc3339(moment: datetime | None = None) -> str:
    """A Kubernetes object timestamp (second precision, UTC)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(moment: datetime) -> str:
    """A log line timestamp as the kubelet writes it (RFC3339Nano, UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class ApiError(Exception):
    """A failed API call, answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def selector_matches(labels: dict[str, str], selector: str | None) -> bool:
    """Equality-based label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a`` and ``!a``, comma-separated."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_matches(obj: dict[str, Any], selector: str | None) -> bool:
    """Field selectors on dotted paths, e.g. ``involvedObject.name=x`` or ``metadata.name!=y``."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        negate = "!=" in term
        path, value = term.split("!=" if negate else "=", 1)
        current: Any = obj
        for part in path.removeprefix("=").split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if (str(current) == value) == negate:
            return False
    return True


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch (what strategic merge does for labels and annotations)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class Store:
    """Thread-safe objects by kind and (namespace, name), with resource versions and change listeners."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            "pods": {},
            "secrets": {},
            "events": {},
            "persistentvolumeclaims": {},
        }
        self._version = 0
        self.created_pods: list[dict[str, Any]] = []  # every pod as submitted, kept after deletion
        self.on_pod_created: Callable[[dict[str, Any]], None] = lambda pod: None
        self.on_pod_deleted: Callable[[dict[str, Any]], None] = lambda pod: None

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{kind}: metadata.name: Required value")
        with self.lock:
            key = (namespace, meta["name"])
            if key in self._objects[kind]:
                raise ApiError(409, "AlreadyExists", f'{kind} "{meta["name"]}" already exists')
            if kind == "persistentvolumeclaims":
                obj["status"] = {"phase": "Bound"}  # a provisioner that binds at once
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=rfc3339(),
                resourceVersion=self._next_version(),
            )
            self._objects[kind][key] = obj
            self.changed.notify_all()
            result = copy.deepcopy(obj)
            if kind == "pods":
                self.created_pods.append(copy.deepcopy(obj))
        if kind == "pods":
            self.on_pod_created(result)
        return result

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            try:
                return copy.deepcopy(self._objects[kind][(namespace, name)])
            except KeyError:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found') from None

    def list(
        self,
        kind: str,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._objects[kind].items())
                if namespace in (None, ns)
                and selector_matches(obj["metadata"].get("labels") or {}, label_selector)
                and field_matches(obj, field_selector)
            ]

    def update(
        self, kind: str, namespace: str, name: str, change: Callable[[dict[str, Any]], object]
    ) -> dict[str, Any]:
        """Apply ``change`` to the stored object in place under the lock and bump its version."""
        with self.lock:
            try:
                obj = self._objects[kind][(namespace, name)]
            except KeyError:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found') from None
            change(obj)
            obj["metadata"]["resourceVersion"] = self._next_version()
            self.changed.notify_all()
            return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self._objects[kind].pop((namespace, name), None)
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
            self.changed.notify_all()
        if kind == "pods":
            self.on_pod_deleted(obj)
        return obj

    @property
    def version(self) -> int:
        with self.lock:
            return self._version

    def record_event(self, pod: dict[str, Any], reason: str, message: str, kind: str = "Normal") -> None:
        """An event about a pod, as the kubelet and scheduler post them."""
        meta = pod["metadata"]
        name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
        now = rfc3339()
        self.create(
            "events",
            meta["namespace"],
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name},
                "involvedObject": {
                    "kind": "Pod",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "source": {"component": "fake-kubelet", "host": "fake-node"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
