"""The fake cluster's HTTP API: the core/v1 routes KubernetesPodOperator and this provider call.

Pods (list with label and field selectors, create, read, merge/strategic-merge patch, graceful delete),
PersistentVolumeClaims (bound at once to a folder of the node, removed with the claim),
pod logs (``container``, ``follow`` as a chunked stream until the container ends, ``timestamps``,
``sinceSeconds``, ``sinceTime``, ``tailLines``), events (list and watch) and Secrets (create, read, list,
delete). Errors are ``Status`` objects with the API server's codes and reasons.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.fake_kubernetes.kubelet import Kubelet
from tests.e2e.fake_kubernetes.store import ApiError, Store, merge_patch, rfc3339

KINDS = {
    "pods": "Pod",
    "secrets": "Secret",
    "events": "Event",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


def _flag(request: Request, name: str) -> bool:
    # the official client sends Python booleans as "True"/"False"
    return request.query_params.get(name, "false").lower() in ("true", "1")


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value else None


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.status(), status_code=exc.code)


def _with_kind(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": KINDS[kind], **obj}


def _parse_log_line(line: bytes) -> tuple[datetime, bytes]:
    stamp, _stream, _tag, message = line.rstrip(b"\n").split(b" ", 3)
    return datetime.strptime(stamp[:26].decode() + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), message


def build_app(store: Store, kubelet: Kubelet) -> Starlette:
    """The API server over ``store``, with ``kubelet`` running the pods."""

    async def list_objects(request: Request) -> Response:
        kind = request.path_params["kind"]
        namespace = request.path_params.get("namespace")
        if kind == "events" and _flag(request, "watch"):
            return StreamingResponse(watch_events(request, namespace), media_type="application/json")
        items = store.list(
            kind,
            namespace,
            request.query_params.get("labelSelector"),
            request.query_params.get("fieldSelector"),
        )
        return JSONResponse(
            {
                "apiVersion": "v1",
                "kind": KINDS[kind] + "List",
                "metadata": {"resourceVersion": str(store.version)},
                "items": items,
            }
        )

    async def watch_events(request: Request, namespace: str | None) -> AsyncIterator[bytes]:
        seen = int(request.query_params.get("resourceVersion") or 0)
        end = asyncio.get_running_loop().time() + (_int(request, "timeoutSeconds") or 30)
        while asyncio.get_running_loop().time() < end:
            for event in store.list("events", namespace, None, request.query_params.get("fieldSelector")):
                version = int(event["metadata"]["resourceVersion"])
                if version > seen:
                    seen = version
                    yield (
                        json.dumps({"type": "ADDED", "object": _with_kind("events", event)}).encode() + b"\n"
                    )
            await asyncio.sleep(0.2)

    async def create_object(request: Request) -> Response:
        kind = request.path_params["kind"]
        try:
            body = await request.json()
            if kind == "pods" and "spec" not in body:
                raise ApiError(422, "Invalid", "Pod: spec: Required value")
            created = store.create(kind, request.path_params["namespace"], body)
        except ApiError as exc:
            return _error(exc)
        return JSONResponse(_with_kind(kind, created), status_code=201)

    async def read_object(request: Request) -> Response:
        kind, namespace, name = (request.path_params[k] for k in ("kind", "namespace", "name"))
        try:
            return JSONResponse(_with_kind(kind, store.get(kind, namespace, name)))
        except ApiError as exc:
            return _error(exc)

    async def patch_object(request: Request) -> Response:
        kind, namespace, name = (request.path_params[k] for k in ("kind", "namespace", "name"))
        content_type = request.headers.get("content-type", "").split(";")[0]
        if content_type not in MERGE_PATCHES:
            return _error(ApiError(415, "UnsupportedMediaType", f"the fake accepts {MERGE_PATCHES} only"))
        patch = await request.json()
        allowed = {"metadata"} if kind == "pods" else {"metadata", "data", "stringData", "type"}
        if set(patch) - allowed:
            return _error(ApiError(422, "Invalid", f"the fake patches only {sorted(allowed)} of {kind}"))
        try:
            updated = store.update(kind, namespace, name, lambda obj: merge_patch(obj, patch))
        except ApiError as exc:
            return _error(exc)
        return JSONResponse(_with_kind(kind, updated))

    async def delete_object(request: Request) -> Response:
        kind, namespace, name = (request.path_params[k] for k in ("kind", "namespace", "name"))
        try:
            if kind != "pods":
                store.delete(kind, namespace, name)
                if kind == "persistentvolumeclaims":
                    kubelet.release_claim(namespace, name)
                return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def terminating(pod: dict[str, Any]) -> None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                pod["metadata"]["deletionTimestamp"] = rfc3339(datetime.now(UTC) + timedelta(seconds=grace))
                pod["metadata"]["deletionGracePeriodSeconds"] = grace

            pod = store.update("pods", namespace, name, terminating)
            kubelet.delete(namespace, name)
        except ApiError as exc:
            return _error(exc)
        return JSONResponse(_with_kind("pods", pod))

    async def read_log(request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        try:
            pod = store.get("pods", namespace, name)
        except ApiError as exc:
            return _error(exc)
        names = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
        container = request.query_params.get("container")
        if container is None and len(pod["spec"]["containers"]) == 1:
            container = pod["spec"]["containers"][0]["name"]
        if container is None or container not in names:
            message = f"a container name must be specified for pod {name}, choose one of: {names}"
            if container is not None:
                message = f"container {container} is not valid for pod {name}"
            return _error(ApiError(400, "BadRequest", message))
        if _flag(request, "previous"):
            return _error(
                ApiError(400, "BadRequest", f'previous terminated container "{container}" not found')
            )
        runner = kubelet.runner(namespace, name)
        if runner is None or not runner.log_path(container).exists():
            message = f'container "{container}" in pod "{name}" is waiting to start: PodInitializing'
            return _error(ApiError(400, "BadRequest", message))
        return StreamingResponse(stream_log(request, runner, container), media_type="text/plain")

    async def stream_log(request: Request, runner: Any, container: str) -> AsyncIterator[bytes]:
        follow, timestamps = _flag(request, "follow"), _flag(request, "timestamps")
        since: datetime | None = None
        if (seconds := _int(request, "sinceSeconds")) is not None:
            since = datetime.now(UTC) - timedelta(seconds=seconds)
        elif since_time := request.query_params.get("sinceTime"):
            since = datetime.fromisoformat(since_time.replace("Z", "+00:00"))
        tail = _int(request, "tailLines")
        path = runner.log_path(container)
        log = path.open("rb")
        try:
            lines = log.readlines()
            if lines and not lines[-1].endswith(b"\n"):
                log.seek(-len(lines.pop()), 1)
            if tail is not None:
                lines = lines[-tail:] if tail else []
            while True:
                for line in lines:
                    moment, message = _parse_log_line(line)
                    if since is None or moment >= since:
                        yield (line.split(b" ", 1)[0] + b" " if timestamps else b"") + message + b"\n"
                if not follow:
                    return
                done = runner.container_done(container) or runner.deleting.is_set()
                lines = []
                while (line := log.readline()) and line.endswith(b"\n"):
                    lines.append(line)
                if line:
                    log.seek(-len(line), 1)
                if lines:
                    continue
                if path.exists() and path.stat().st_ino != os.fstat(log.fileno()).st_ino:
                    log.close()  # rotated: go on with the new file, as the kubelet's follower does
                    log = path.open("rb")
                elif done:
                    return
                else:
                    await asyncio.sleep(0.1)
        finally:
            log.close()

    objects = "/api/v1/namespaces/{namespace}/{kind:str}"

    def known_kind(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            if request.path_params["kind"] not in KINDS:
                kind = request.path_params["kind"]
                return _error(ApiError(404, "NotFound", f"the fake serves {sorted(KINDS)}, not {kind}"))
            return await endpoint(request)

        return route

    return Starlette(
        routes=[
            Route("/api/v1/{kind:str}", known_kind(list_objects), methods=["GET"]),
            Route(objects, known_kind(list_objects), methods=["GET"]),
            Route(objects, known_kind(create_object), methods=["POST"]),
            Route(objects + "/{name}", known_kind(read_object), methods=["GET"]),
            Route(objects + "/{name}", known_kind(patch_object), methods=["PATCH"]),
            Route(objects + "/{name}", known_kind(delete_object), methods=["DELETE"]),
            Route("/api/v1/namespaces/{namespace}/pods/{name}/log", read_log, methods=["GET"]),
        ]
    )
