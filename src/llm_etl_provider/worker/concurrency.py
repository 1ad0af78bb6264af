"""How many requests the worker keeps in flight: a limit that can change mid-run, and a probe that finds the
level a server serves best when the server does not say.

The limit also bounds the records held for in-order writing (dispatched, not yet written) to ``4 x limit``,
so that memory follows the concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_CONCURRENCY = 1024
PROBE_START = 8
HELD_PER_REQUEST = 4  # records held for in-order writing, per request in flight


class InFlightLimit:
    """At most ``limit`` requests in flight and ``HELD_PER_REQUEST x limit`` records held; one dispatcher
    waits in :meth:`acquire`.

    :param limit: requests in flight
    :param max_held: records held for in-order writing; default ``HELD_PER_REQUEST x limit`` (it follows the
        limit)
    """

    def __init__(self, limit: int, max_held: int | None = None) -> None:
        self.limit = limit
        self.max_held = max_held
        self.in_flight = 0
        self.held = 0
        self._changed = asyncio.Event()

    @property
    def window(self) -> int:
        return self.max_held or HELD_PER_REQUEST * self.limit

    async def acquire(self) -> None:
        while self.in_flight >= self.limit or self.held >= self.window:
            self._changed.clear()
            await self._changed.wait()
        self.in_flight += 1
        self.held += 1

    def request_done(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    def written(self) -> None:
        self.held -= 1
        self._changed.set()

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._changed.set()


class ConcurrencyProbe:
    """Raise the requests in flight while throughput grows; back off when the server says it is full.

    The limit starts where it is set and doubles each time the records completed per second at the new level
    beat the best so far by ``gain``; at the first level that does not, it returns to the best level and
    holds. A queue-full answer (HTTP 503) halves the limit and holds, at most once per ``limit``
    completions. Each level is measured over ``level`` (at least 16) completions, after skipping half as
    many, most of them of requests sent before it: about two round trips of the server per level.

    :param limit: the limit it sets
    :param maximum: the highest limit it tries
    :param gain: how much faster a level must be to count as better (1.1: 10 %)
    :param clock: seconds, monotonic
    """

    def __init__(
        self,
        limit: InFlightLimit,
        *,
        maximum: int = MAX_CONCURRENCY,
        gain: float = 1.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.maximum = maximum
        self.gain = gain
        self.clock = clock
        self.levels: list[int] = [limit.limit]
        self.holding = False
        self._cooldown = 0  # completions before another queue-full answer may lower the limit again
        self._best_rate = 0.0
        self._best_level = limit.limit
        self._begin()

    def _begin(self) -> None:
        self._skip = self.limit.limit // 2
        self._counted = 0
        self._since = self.clock()

    def completed(self) -> None:
        """One record completed (a result or a dead letter)."""
        if self._cooldown:
            self._cooldown -= 1
        if self.holding:
            return
        if self._skip:
            self._skip -= 1
            if not self._skip:
                self._since = self.clock()
            return
        self._counted += 1
        level = self.limit.limit
        if self._counted < max(level, 16):
            return
        rate = self._counted / max(self.clock() - self._since, 1e-9)
        if rate >= self._best_rate * self.gain and level < self.maximum:
            self._best_rate, self._best_level = rate, level
            self._set(min(2 * level, self.maximum))
        else:
            if rate >= self._best_rate * self.gain:
                self._best_level = level
            self.holding = True
            self._set(self._best_level)

    def overloaded(self) -> None:
        """The server answered that its queue is full: halve the limit, once per ``limit`` completions (the
        requests already in flight may be refused too)."""
        if self._cooldown:
            return
        self.holding = True
        self._set(max(self.limit.limit // 2, 1))
        self._cooldown = self.limit.limit

    def _set(self, level: int) -> None:
        if level != self.limit.limit:
            self.limit.set_limit(level)
            self.levels.append(level)
        self._begin()
