"""Run counters, progress lines and the final summary: counts and rates only, never record content."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llm_etl_provider.contract.summary import PROGRESS_SERIES, LatencyHistogram, ProgressSeries


@dataclass
class RunStats:
    """What the run has done so far (cumulative across restarts where a checkpoint carried the counts)."""

    total: int | None = None
    results: int = 0
    dead_letters: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    skipped_blank_lines: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    retries: int = 0
    reused: int = 0  # results published from an earlier output, sent to no model
    resumed_from: int = 0
    resumed_tokens: int = 0
    resumed_completion_tokens: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    series: ProgressSeries = field(default_factory=ProgressSeries)
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # Unix time, for the span of several shards

    @property
    def done(self) -> int:
        return self.results + self.dead_letters

    def counts(self) -> dict[str, Any]:
        """The counters a checkpoint carries."""
        return {
            "results": self.results,
            "dead_letters": self.dead_letters,
            "by_reason": dict(self.by_reason),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "retries": self.retries,
            "reused": self.reused,
        }

    def restore(self, counts: dict[str, Any], records_done: int) -> None:
        self.results = int(counts.get("results", 0))
        self.dead_letters = int(counts.get("dead_letters", 0))
        self.by_reason = Counter(counts.get("by_reason", {}))
        self.prompt_tokens = int(counts.get("prompt_tokens", 0))
        self.completion_tokens = int(counts.get("completion_tokens", 0))
        self.cached_tokens = int(counts.get("cached_tokens", 0))
        self.retries = int(counts.get("retries", 0))
        self.reused = int(counts.get("reused", 0))
        self.resumed_from = records_done
        self.resumed_tokens = self.prompt_tokens + self.completion_tokens
        self.resumed_completion_tokens = self.completion_tokens

    def sample(self) -> None:
        """Add the records done now to the progress series (a bounded one: most calls add nothing)."""
        self.series.add(time.monotonic() - self.started, self.done)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def rate(self) -> float:
        """Records per second done by this process."""
        return (self.done - self.resumed_from) / self.elapsed()

    def progress_line(self) -> str:
        rate = self.rate()
        parts = [f"progress records={self.done}"]
        if self.total:
            parts[0] += f"/{self.total} ({100 * self.done / self.total:.1f}%)"
        parts += [f"results={self.results}", f"dead_letters={self.dead_letters}", f"rate={rate:.2f}/s"]
        if self.total and rate > 0:
            parts.append(f"eta={_duration((self.total - self.done) / rate)}")
        return " ".join(parts)

    def summary(self) -> dict[str, Any]:
        elapsed = self.elapsed()
        p50, p95 = self.latency.percentile(0.5), self.latency.percentile(0.95)
        processed = self.done - self.resumed_from
        return {
            "records": self.done,
            "results": self.results,
            "dead_letters": self.dead_letters,
            "dead_letter_reasons": dict(sorted(self.by_reason.items())),
            "skipped_blank_lines": self.skipped_blank_lines,
            "resumed_from": self.resumed_from,
            "elapsed_s": round(elapsed, 3),
            "started_at": round(self.started_at, 3),
            "ended_at": round(self.started_at + elapsed, 3),
            "records_per_s": round(processed / elapsed, 3),
            "tokens_per_s": round(
                (self.prompt_tokens + self.completion_tokens - self.resumed_tokens) / elapsed, 1
            ),
            "completion_tokens_per_s": round(
                (self.completion_tokens - self.resumed_completion_tokens) / elapsed, 1
            ),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_tokens,
            "retries": self.retries,
            "reused": self.reused,
            "latency_p50_s": round(p50, 3) if p50 is not None else None,
            "latency_p95_s": round(p95, 3) if p95 is not None else None,
            PROGRESS_SERIES: self.series.to_summary(elapsed, self.done),
        }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
