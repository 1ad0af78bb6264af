"""The worker's progress, read from its container's log for the task log: the one place that tells its
progress lines from the sealed result frames that share the log.

KubernetesPodOperator's own log copying (``get_logs``) is off for the enrichment pod, in every path (the
task's, the trigger's, the DAG's callbacks): it would copy the frames too.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_etl_provider.transport.frames import carries_frame
from llm_etl_provider.transport.sources import pod_log_lines

# how far back each read starts before the last line seen: the node's clock and this one may differ
CLOCK_SLACK_SECONDS = 60
FOLLOW_READ_TIMEOUT = 300.0  # a followed log silent this long is read again (a connection may die unseen)
_TIMESTAMPED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z (.*)", re.DOTALL)

LogTime = tuple[datetime.datetime, int]  # a line's time to the second, and its nanoseconds


def timestamped_message(line: str) -> tuple[LogTime, str] | None:
    """A ``timestamps=True`` log line's time and message, or None for a line that does not start with one
    (a piece of a line too long to read whole)."""
    match = _TIMESTAMPED.fullmatch(line.rstrip("\n"))
    if match is None:
        return None
    seconds = datetime.datetime.fromisoformat(match[1]).replace(tzinfo=datetime.UTC)
    nanos = int((match[2] or "0").ljust(9, "0"))
    return (seconds, nanos), match[3]


@dataclass
class ProgressReader:
    """Reads a container's log from where its last read stopped and hands each new progress line on.

    :param core_api: a ``kubernetes.client.CoreV1Api``
    :param on_line: called with each progress line and its time
    """

    core_api: Any
    pod: str
    namespace: str
    container: str
    on_line: Callable[[str, datetime.datetime], None]
    last: LogTime | None = None

    def read(self, *, follow: bool = False) -> None:
        """Hand on the lines written since the last read (all of them, the first time); with ``follow``, and
        the lines written from now on, until the container ends or ``FOLLOW_READ_TIMEOUT`` passes in
        silence."""
        since = None
        if self.last is not None:
            age = datetime.datetime.now(tz=datetime.UTC) - self.last[0]
            since = max(1, math.ceil(age.total_seconds()) + CLOCK_SLACK_SECONDS)
        lines = pod_log_lines(
            self.pod,
            self.namespace,
            container=self.container,
            core_api=self.core_api,
            timestamps=True,
            since_seconds=since,
            follow=follow,
            request_timeout=FOLLOW_READ_TIMEOUT if follow else None,
        )
        # closed at once, also when a handler raises: the response holds a connection
        with contextlib.closing(lines):
            for raw in lines:  # a line too long to read whole comes in pieces, which carry no time
                parsed = timestamped_message(raw.decode("utf-8", errors="backslashreplace"))
                if parsed is None or (self.last is not None and parsed[0] <= self.last):
                    continue
                self.last, message = parsed
                if message and not carries_frame(message):
                    self.on_line(message, self.last[0])
