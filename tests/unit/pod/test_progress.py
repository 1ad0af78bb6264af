"""The worker's progress from its pod's log: new lines only, never a frame."""

from __future__ import annotations

import pytest

from llm_etl_provider.pod.progress import ProgressReader, timestamped_message
from llm_etl_provider.transport.frames import FORMAT

FRAME_LINE = f"{FORMAT} run 0 3 R AAAA"


def timestamped(*messages: str, second: int = 0) -> bytes:
    return b"".join(
        f"2026-11-27T10:00:{second + n:02d}.{n:09d}Z {m}\n".encode() for n, m in enumerate(messages)
    )


def test_the_progress_reader_hands_on_new_progress_lines_and_never_a_frame(api):
    api.add_pod("etl", "pod", {}, log=timestamped("progress 1/3", FRAME_LINE, "progress 2/3"))
    seen = []
    reader = ProgressReader(api, "pod", "etl", "base", lambda line, at: seen.append((line, at.second)))
    reader.read()
    assert seen == [("progress 1/3", 0), ("progress 2/3", 2)]
    # the next read may start earlier (clock slack) and sees the same lines again: only new ones go on
    api.objects["pods"][("etl", "pod")]["log"] += timestamped(FRAME_LINE, "progress 3/3", second=3)
    reader.read()
    assert seen[2:] == [("progress 3/3", 4)]


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("2026-11-27T10:00:01.5Z ok\n", ((1, 500_000_000), "ok")),
        ("2026-11-27T10:00:01Z ok", ((1, 0), "ok")),
        ("2026-11-27T10:00:01.000000001Z a b", ((1, 1), "a b")),
        ("no time at all", None),
        ("", None),
    ],
)
def test_a_log_line_s_time_is_read_to_the_nanosecond(line, parsed):
    found = timestamped_message(line)
    if parsed is None:
        assert found is None
        return
    assert found is not None
    (seconds, nanos), message = found
    assert ((seconds.second, nanos), message) == parsed
