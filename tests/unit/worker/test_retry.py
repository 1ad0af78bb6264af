from __future__ import annotations

import random

import pytest

from llm_etl_provider.worker.retry import RetryPolicy


def test_delays_use_full_jitter_under_an_exponential_cap():
    policy = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=3.0, rng=random.Random(1))
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0)]:
        samples = [policy.delay(retry) for _ in range(2000)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.9 * cap  # the whole range is used, not a fixed step
        assert min(samples) < 0.1 * cap


@pytest.mark.parametrize("kwargs", [{"base_delay": -1.0}, {"max_delay": -1.0}])
def test_nonsense_policies_are_refused(kwargs):
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(max_attempts=3, **kwargs)
