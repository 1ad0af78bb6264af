from __future__ import annotations

import asyncio

import httpx
import pytest

from llm_etl_provider.worker.http_lanes import HttpLanes


def test_each_request_in_flight_has_a_lane_and_lanes_are_reused():
    in_flight = 0
    most = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(
            200, json={"path": request.url.path}, headers={"x-seen": request.headers["x-key"]}
        )

    async def go() -> HttpLanes:
        async with HttpLanes(
            timeout=httpx.Timeout(5), headers={"x-key": "k"}, transport=httpx.MockTransport(handle)
        ) as lanes:
            for _ in range(3):  # three waves of 40 at once
                responses = await asyncio.gather(
                    *(lanes.request("GET", f"http://llm/{n}") for n in range(40))
                )
                assert [r.json()["path"] for r in responses] == [f"/{n}" for n in range(40)]
                assert all(r.headers["x-seen"] == "k" for r in responses)
            assert lanes.lanes == 40  # made for the first wave, reused by the others
            return lanes

    lanes = asyncio.run(go())
    assert most == 40
    assert lanes.lanes == 0  # closed


def test_a_failed_request_gives_its_lane_back():
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    async def go() -> int:
        async with HttpLanes(timeout=httpx.Timeout(5), transport=httpx.MockTransport(handle)) as lanes:
            with pytest.raises(httpx.ConnectError):
                await lanes.request("GET", "http://llm/")
            assert (await lanes.request("GET", "http://llm/")).status_code == 200
            return lanes.lanes

    assert asyncio.run(go()) == 1
