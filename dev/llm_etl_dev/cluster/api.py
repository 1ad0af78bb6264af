"""A small client of the Kubernetes API over mutual TLS, on plain dicts, for the development cluster's own
components (the bootstrap and the volume provisioner); the provider talks through the official client."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """A call the API server refused: its HTTP code, the Status reason and message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


def rfc3339(moment: datetime | None = None) -> str:
    """An object timestamp (second precision, UTC)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(moment: datetime) -> str:
    """A log line timestamp as the kubelet writes it (RFC3339Nano, UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context that trusts only the cluster's CA and presents ``cert``."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


class KubeApi:
    """``get``, ``post``, ``patch`` and ``delete`` on API paths, as one identity (a client certificate)."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path, *, timeout: float = 30.0) -> None:
        self.server = server
        self._client = httpx.Client(base_url=server, verify=tls_context(ca, cert, key), timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def healthy(self, check: str = "/readyz") -> bool:
        """Whether the API server's health check (``/readyz``, ``/livez``) says ``ok``."""
        response = self._client.get(check)
        return response.status_code == 200 and response.text == "ok"

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON (``raw``: its text); an :class:`ApiError` for a refusal."""
        response = self._client.request(method, path, json=body, **kwargs)
        if response.is_error:
            try:
                status = response.json()
                reason, message = str(status.get("reason", "")), str(status.get("message", response.text))
            except ValueError:
                reason, message = response.reason_phrase, response.text
            raise ApiError(response.status_code, reason, message)
        if raw:
            return response.text
        return response.json() if response.content else None

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any, **params: str) -> Any:
        return self.request("POST", path, body, params=params)

    def patch(self, path: str, body: Any, *, kind: str = "merge") -> Any:
        return self.request("PATCH", path, body, headers={"Content-Type": f"application/{kind}-patch+json"})

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, *, timeout: int) -> Iterator[dict[str, Any]]:
        """The watch events of collection ``path`` after ``resource_version`` ("0": the current objects as
        ADDED first), for ``timeout`` seconds."""
        params = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": str(timeout)}
        with self._client.stream("GET", path, params=params, timeout=timeout + 10) as response:
            if response.is_error:
                response.read()
                raise ApiError(response.status_code, response.reason_phrase, response.text)
            for line in response.iter_lines():
                if line:
                    event: dict[str, Any] = json.loads(line)
                    if event["type"] == "ERROR":
                        raise ApiError(event["object"].get("code", 500), "WatchError", str(event["object"]))
                    yield event

    def ensure(self, path: str, body: dict[str, Any]) -> None:
        """Create ``body`` in collection ``path`` unless an object of its name is there already."""
        try:
            self.post(path, body)
        except ApiError as exc:
            if exc.code != 409:
                raise
