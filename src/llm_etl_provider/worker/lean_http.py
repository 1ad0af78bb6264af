"""A lean HTTP/1.1 client for the LLM server beside the worker: plain ``http://``, keep-alive, JSON bodies.

httpx costs about 1 ms of CPU per request (its request and response models, header objects, the transport's
layers); at hundreds of requests in flight on one core that, not the server, bounds the worker. The server in
the pod is on localhost and speaks plain HTTP/1.1, so a request here is one preformatted header block and
a JSON body written on an idle keep-alive connection, and its response one read of the header block and one of
the body (``Content-Length``, or ``chunked``). Each request in flight has a connection of its own, taken from
a stack of idle ones (as :class:`~llm_etl_provider.worker.http_lanes.HttpLanes` does with httpx clients).

Failures are raised as httpx's exceptions (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError`` ...),
so that the clients read them alike and their retries count every attempt: nothing is sent twice here. An
idle connection the server has closed (its end of stream seen) is dropped, not used. ``https://`` goes
through :class:`HttpLanes` (:func:`http_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from llm_etl_provider.worker.http_lanes import HttpLanes

MAX_HEADER_BYTES = 64 * 1024  # a response's header block; an LLM server's is a few hundred bytes
MAX_BODY_BYTES = 64 * 1024 * 1024


class LeanResponse:
    """What the clients read of a response: its status, headers (lower-case names) and body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def closed(self) -> bool:
        """Whether the server closed it (or it was closed here) while it was idle."""
        return self.reader.at_eof() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class LeanLanes:
    """Send requests like ``httpx.AsyncClient.request`` (``json=`` bodies) to ``http://`` servers.

    :param timeout: its ``connect`` bounds opening a connection, its ``read`` a whole response
    :param headers: sent with every request
    """

    def __init__(self, *, timeout: httpx.Timeout, headers: dict[str, str] | None = None) -> None:
        self.connect_timeout = timeout.connect
        self.read_timeout = timeout.read
        self.extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self.opened = 0

    @property
    def lanes(self) -> int:
        """How many connections were opened."""
        return self.opened

    async def request(self, method: str, url: str, *, json: Any = None) -> LeanResponse:
        """Send one request and read its whole response, on a connection no other request uses meanwhile."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"the lean client speaks plain http://, not {url!r}")
        address = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = b"" if json is None else _dumps(json)
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{self.extra}"
            + ("Content-Type: application/json\r\n" if json is not None else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        idle = self._idle.setdefault(address, [])
        while idle and idle[-1].closed:
            self._discard(idle.pop())
        connection = idle.pop() if idle else await self._connect(address)
        return await self._exchange(connection, address, head + body)

    async def _connect(self, address: tuple[str, int]) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*address, limit=MAX_HEADER_BYTES)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {address[0]}:{address[1]} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from None
        self.opened += 1
        connection = _Connection(reader, writer)
        self._open.add(connection)
        return connection

    async def _exchange(self, connection: _Connection, address: tuple[str, int], data: bytes) -> LeanResponse:
        try:
            async with asyncio.timeout(self.read_timeout):
                connection.writer.write(data)
                await connection.writer.drain()
                try:
                    head = await connection.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    said = "mid-response" if exc.partial else "without sending a response"
                    raise httpx.RemoteProtocolError(f"the server closed the connection {said}") from None
                status, headers = _parse_head(head)
                content = b"" if status in (204, 304) else await _read_body(connection.reader, headers)
        except httpx.HTTPError:
            self._discard(connection)
            raise
        except TimeoutError:
            self._discard(connection)
            raise httpx.ReadTimeout("no whole response within the request timeout") from None
        except asyncio.LimitOverrunError:
            self._discard(connection)
            raise httpx.RemoteProtocolError("the response's header block is too large") from None
        except (ConnectionError, OSError) as exc:
            self._discard(connection)
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        except BaseException:
            self._discard(connection)  # cancelled mid-exchange: the connection's state is unknown
            raise
        if headers.get("connection", "").lower() == "close":
            self._discard(connection)
        else:
            self._idle[address].append(connection)
        return LeanResponse(status, headers, content)

    def _discard(self, connection: _Connection) -> None:
        self._open.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()
        self._open.clear()
        self._idle.clear()

    async def __aenter__(self) -> LeanLanes:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status code and headers (lower-case names) of a response's header block."""
    status_line, _, rest = head.partition(b"\r\n")
    fields = status_line.split(b" ", 2)
    try:
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1."):
            raise ValueError(status_line)
        status = int(fields[1])
    except ValueError:
        raise httpx.RemoteProtocolError("the response does not begin with an HTTP/1.1 status line") from None
    headers = {}
    for line in rest.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await _read_chunked(reader)
        if (length := headers.get("content-length")) is not None:
            size = int(length)
            if not 0 <= size <= MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError(f"a response body of {size} bytes")
            return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError("the server closed the connection mid-body") from None
    except ValueError:
        raise httpx.RemoteProtocolError("the response's Content-Length is not a number") from None
    headers["connection"] = "close"  # a body that ends with the connection
    return await reader.read(MAX_BODY_BYTES)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        total += size
        if total > MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError(f"a response body over {MAX_BODY_BYTES} bytes")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def http_client(url: str, *, timeout: httpx.Timeout, headers: dict[str, str]) -> LeanLanes | HttpLanes:
    """The worker's HTTP client for the LLM server at ``url``: the lean one for plain ``http://``, httpx's
    lanes for ``https://``."""
    if urlsplit(url).scheme == "http":
        return LeanLanes(timeout=timeout, headers=headers)
    return HttpLanes(timeout=timeout, headers=headers)
