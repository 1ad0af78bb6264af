"""Bounded retries with exponential backoff and full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    The n-th retry waits a random time between 0 and ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds
    ("full jitter"), so that many workers retrying at once do not hit the server in lockstep.

    :param max_attempts: attempts in all, the first one included (at least 1)
    :param base_delay: the cap of the first retry's wait, in seconds
    :param max_delay: the cap of any wait, in seconds
    """

    max_attempts: int
    base_delay: float = 0.5
    max_delay: float = 20.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays cannot be negative")

    def delay(self, retry: int) -> float:
        """Return the wait before the given retry (1 for the first retry)."""
        return self.rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))
