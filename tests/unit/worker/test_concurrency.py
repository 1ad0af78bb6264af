"""The in-flight limit and the probe that finds the concurrency a server serves best."""

from __future__ import annotations

import asyncio

import pytest

from llm_etl_provider.worker.concurrency import ConcurrencyProbe, InFlightLimit


class SimulatedServer:
    """Completes records at ``rate(level)`` per second, on a clock the probe reads."""

    def __init__(self, rate) -> None:
        self.rate = rate
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def run(self, probe: ConcurrencyProbe, records: int) -> None:
        for _ in range(records):
            self.now += 1 / self.rate(probe.limit.limit)
            probe.completed()


@pytest.mark.parametrize(
    ("capacity", "levels", "held"),
    [
        (32, [8, 16, 32, 64, 32], 32),  # gains up to 32 in flight, none beyond
        (256, [8, 16, 32, 64, 128, 256, 512, 256], 256),  # a GPU engine of 256 sequences
        (4, [8, 16, 8], 8),  # no gain from 8 to 16: it keeps the first level
    ],
)
def test_the_probe_doubles_while_throughput_grows_and_holds_the_best_level(capacity, levels, held):
    server = SimulatedServer(lambda level: 10.0 * min(level, capacity))
    probe = ConcurrencyProbe(InFlightLimit(8), clock=server.clock)
    server.run(probe, 20_000)
    assert probe.holding
    assert probe.limit.limit == held
    assert probe.levels == levels


def test_a_full_queue_halves_the_limit_once_per_round_of_requests():
    server = SimulatedServer(lambda level: 100.0)
    probe = ConcurrencyProbe(InFlightLimit(64), clock=server.clock)
    for _ in range(10):  # a burst of 503s from the requests in flight
        probe.overloaded()
    assert probe.limit.limit == 32
    server.run(probe, 32)
    probe.overloaded()
    assert probe.limit.limit == 16
    assert probe.levels == [64, 32, 16]


def test_the_limit_bounds_requests_in_flight_and_records_held():
    async def blocked(limit: InFlightLimit) -> bool:
        waiting = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0)
        if waiting.done():
            return False
        waiting.cancel()
        return True

    async def go() -> None:
        limit = InFlightLimit(2)
        await limit.acquire()
        await limit.acquire()
        assert await blocked(limit)  # two in flight
        for _ in range(6):  # each request ends and another is sent; nothing is written
            limit.request_done()
            await limit.acquire()
        assert (limit.in_flight, limit.held) == (2, 8)
        limit.request_done()
        limit.request_done()
        assert await blocked(limit)  # none in flight, but 8 held for in-order writing (4 x 2)
        limit.written()
        assert not await blocked(limit)
        limit.set_limit(4)  # a higher limit lets more be held and sent
        await asyncio.wait_for(limit.acquire(), 1)
        assert (limit.in_flight, limit.held) == (2, 9)

    asyncio.run(go())
