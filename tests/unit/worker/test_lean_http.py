"""The lean HTTP/1.1 client against a real asyncio server: bodies by length and chunks, keep-alive, a
connection the server closed while idle, timeouts and refusals raised as httpx's exceptions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest

from llm_etl_provider.worker.http_lanes import HttpLanes
from llm_etl_provider.worker.lean_http import LeanLanes, http_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    line, *rest = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line.encode(), headers, body


def serve(handler: Handler, test: Callable[[str], Awaitable[None]]) -> None:
    async def go() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await test(f"http://127.0.0.1:{port}")

    asyncio.run(go())


def lanes(timeout: float = 5) -> LeanLanes:
    return LeanLanes(timeout=httpx.Timeout(timeout, connect=2), headers={"Authorization": "Bearer k"})


def test_json_in_and_out_on_one_kept_alive_connection_with_length_and_chunked_bodies():
    seen: list[tuple[bytes, dict[str, str], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(3):
            seen.append(await read_request(reader))
            payload = json.dumps({"n": n, "é": "ü"}).encode()
            if n == 1:  # chunked, in two chunks
                half = len(payload) // 2
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                    % (half, payload[:half], len(payload) - half, payload[half:])
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
            await writer.drain()
        writer.close()

    async def test(url: str) -> None:
        async with lanes() as client:
            for n in range(3):
                response = await client.request("POST", f"{url}/v1/chat?x=1", json={"q": n, "t": "é"})
                assert response.status_code == 200
                assert response.json() == {"n": n, "é": "ü"}
            assert client.lanes == 1  # one connection, kept alive

    serve(handler, test)
    line, headers, body = seen[0]
    assert line == b"POST /v1/chat?x=1 HTTP/1.1"
    assert headers["authorization"] == "Bearer k"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"q": 0, "t": "é"}


def test_an_idle_connection_the_server_closed_is_not_used_again():
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()  # keep-alive not honoured: the next request on it finds it closed

    async def test(url: str) -> None:
        async with lanes() as client:
            assert (await client.request("GET", f"{url}/health")).status_code == 503
            await asyncio.sleep(0.05)
            assert (await client.request("GET", f"{url}/health")).status_code == 503
            assert client.lanes == 2

    serve(handler, test)
    assert requests == 2  # each sent once: nothing is sent twice on the client's own account


def test_a_response_cut_short_a_silent_server_and_a_refused_connection_raise_httpx_s_errors():
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            await asyncio.sleep(5)
        finally:
            writer.close()

    async def expect_cut(url: str) -> None:
        async with lanes() as client:
            with pytest.raises(httpx.RemoteProtocolError, match="mid-body"):
                await client.request("POST", url + "/", json={})

    async def expect_timeout(url: str) -> None:
        async with lanes(timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.request("POST", url + "/", json={})

    serve(cut, expect_cut)
    serve(silent, expect_timeout)

    async def refused() -> None:
        async with lanes() as client:
            with pytest.raises(httpx.ConnectError):
                await client.request("GET", "http://127.0.0.1:1/")

    asyncio.run(refused())


def test_https_goes_through_httpx_and_plain_http_through_the_lean_client():
    timeout = httpx.Timeout(5)
    assert isinstance(http_client("http://127.0.0.1:8080", timeout=timeout, headers={}), LeanLanes)
    assert isinstance(http_client("https://llm.example.com", timeout=timeout, headers={}), HttpLanes)
