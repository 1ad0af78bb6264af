"""The kubelet API of the dev node: container logs, over TLS, for the API server only."""

from __future__ import annotations

import contextlib
import http.server
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_etl_provider.dev.cluster.layout import (
    NODE_ADDRESS,
)

if TYPE_CHECKING:
    from llm_etl_provider.dev.cluster.node import NodeAgent


def _parse_log_line(line: bytes) -> tuple[datetime, bytes]:
    stamp, _stream, _tag, message = line.rstrip(b"\n").split(b" ", 3)
    return datetime.strptime(stamp[:26].decode() + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), message


def _query_flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("true", "1")


def _query_int(query: dict[str, list[str]], name: str) -> int | None:
    value = query.get(name, [""])[0]
    return int(value) if value else None


def follow_log(
    path: Path,
    *,
    follow: bool,
    timestamps: bool,
    since: datetime | None,
    tail: int | None,
    done: Callable[[], bool],
) -> Iterator[bytes]:
    """A container's log as the kubelet serves it: whole lines, from ``since`` or the last ``tail``, and with
    ``follow`` the lines to come until the container ends, across a rotation."""
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
            finished = done()
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
            elif finished:
                return
            else:
                time.sleep(0.1)
    finally:
        log.close()


class KubeletServer:
    """``GET /containerLogs/<namespace>/<pod>/<container>`` over TLS, for clients with a certificate the
    cluster's CA signed (the API server's ``--kubelet-client-certificate``)."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        config = agent.config
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer((NODE_ADDRESS, config.kubelet_port), handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(config.serving_cert), str(config.serving_key))
        context.load_verify_locations(str(config.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, name="kubelet-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        agent = self.agent

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _text(self, code: int, message: str) -> None:
                body = message.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if url.path == "/healthz":
                    self._text(200, "ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._text(404, "404 page not found")
                    return
                _, namespace, name, container = parts
                query = urllib.parse.parse_qs(url.query)
                runner = agent.runner(namespace, name)
                if runner is None:
                    self._text(404, f'pod "{name}" not found')
                    return
                path, problem = runner.container_log(container, previous=_query_flag(query, "previous"))
                if path is None:
                    self._text(400, problem)
                    return
                since: datetime | None = None
                if (seconds := _query_int(query, "sinceSeconds")) is not None:
                    since = datetime.now(UTC) - timedelta(seconds=seconds)
                elif since_time := query.get("sinceTime", [""])[0]:
                    since = datetime.fromisoformat(since_time.replace("Z", "+00:00"))
                limit = _query_int(query, "limitBytes")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Connection", "close")
                self.end_headers()
                sent = 0
                lines = follow_log(
                    path,
                    follow=_query_flag(query, "follow"),
                    timestamps=_query_flag(query, "timestamps"),
                    since=since,
                    tail=_query_int(query, "tailLines"),
                    done=lambda: runner.container_done(container, path),
                )
                with contextlib.suppress(OSError):
                    for line in lines:
                        if limit is not None and sent + len(line) > limit:
                            self.wfile.write(line[: limit - sent])
                            return
                        self.wfile.write(line)
                        sent += len(line)

        return Handler
