"""What the worker's summary tells the run's report, written once: the worker fills it, the report reads it.

The summary travels sealed in the stream's trailer, one log line of at most
:data:`~llm_etl_provider.transport.frames.MAX_LINE_BYTES`, and from there into the shard's manifest, so every
part of it here is bounded:

- ``progress_series`` (:data:`PROGRESS_SERIES`): at most :data:`MAX_SERIES_POINTS` pairs ``[seconds since the
  worker started, records done]`` (:class:`ProgressSeries`), the shard's throughput over time;
- ``output_labels`` (:data:`OUTPUT_LABELS`): the task's categorical fields with their labels, from its output
  schema (:func:`output_labels`), at most :data:`LABELS_BUDGET` bytes of JSON; the report counts only these
  labels, never free text a model may have copied from a record;
- ``label_field`` (:data:`LABEL_FIELD`): the input field (the worker's ``--label-field``) whose value each
  result carries as ``meta.label`` (:data:`RESULT_LABEL`), for the report's agreement with it.

:class:`LatencyHistogram` is how the worker and the report both turn latencies into percentiles.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Literal

PROGRESS_SERIES = "progress_series"
OUTPUT_LABELS = "output_labels"
OUTPUT_LABELS_COMPLETE = "output_labels_complete"  # False: fields past LABELS_BUDGET were left out
LABEL_FIELD = "label_field"
RESULT_LABEL = "label"  # the key in a result line's ``meta``
MAX_SERIES_POINTS = 100
LABELS_BUDGET = 1500  # bytes of JSON: the trailer's line holds the rest of the summary beside it
LabelKind = Literal["one", "many"]  # a field holds one label, or a list of them


class LatencyHistogram:
    """Latencies in logarithmic buckets 2% wide: percentiles within 2%, in memory that does not grow."""

    _GROWTH = math.log(1.02)

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, seconds: float) -> None:
        # floor, not int(): a latency under a second has a negative logarithm, which int() rounds up
        self._buckets[math.floor(math.log(max(seconds, 1e-4)) / self._GROWTH)] += 1
        self.count += 1

    def percentile(self, fraction: float) -> float | None:
        """Return the latency below which ``fraction`` of the samples fall, in seconds."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return math.exp((bucket + 0.5) * self._GROWTH)
        raise AssertionError("unreachable: ranks stop at the sample count")


class ProgressSeries:
    """Samples of (seconds since the start, records done), at most ``max_points`` of them: samples closer
    than ``spacing`` seconds to the last are passed over, and when the series is full every other sample is
    dropped and the spacing doubles, so that it spans the whole run evenly in memory that does not grow."""

    def __init__(self, max_points: int = MAX_SERIES_POINTS, spacing: float = 1.0) -> None:
        if max_points < 4:
            raise ValueError("a series needs room for at least 4 points")
        self.max_points = max_points
        self.spacing = spacing
        self.points: list[tuple[float, int]] = []

    def add(self, seconds: float, records: int) -> None:
        if self.points and seconds - self.points[-1][0] < self.spacing:
            return
        self.points.append((seconds, records))
        if len(self.points) >= self.max_points:  # one place stays free for the final sample
            self.points = self.points[::2]
            self.spacing *= 2

    def to_summary(self, seconds: float, records: int) -> list[list[float | int]]:
        """The series for the summary, ending with the final sample (``seconds``, ``records``)."""
        points = list(self.points)
        if not points or points[-1][0] < seconds:
            points.append((seconds, records))
        return [[round(t, 1), n] for t, n in points]


def label_text(value: Any) -> str:
    """A label as the report shows and compares it: JSON's spelling for booleans, null and numbers."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def output_labels(schema: dict[str, Any]) -> tuple[list[list[Any]], bool]:
    """The output schema's categorical fields in its order, as ``[field, kind, labels]``: enums and
    booleans (``one``), lists of them and the enum properties of listed objects (``entities.type``:
    ``many``). Anything else may be free text copied from a record, so the report never lists it. Return
    them, at most :data:`LABELS_BUDGET` bytes of JSON, and whether all fitted."""
    found: list[list[Any]] = []

    def labels(part: Any) -> list[str] | None:
        if not isinstance(part, dict):
            return None
        if isinstance(part.get("enum"), list):
            return list(dict.fromkeys(label_text(value) for value in part["enum"]))
        if part.get("type") == "boolean":
            return ["true", "false"]
        return None

    for name, part in (schema.get("properties") or {}).items():
        if (one := labels(part)) is not None:
            found.append([name, "one", one])
        elif isinstance(part, dict) and isinstance(items := part.get("items"), dict):
            if (many := labels(items)) is not None:
                found.append([name, "many", many])
            for inner, inner_part in (items.get("properties") or {}).items():
                if (many := labels(inner_part)) is not None:
                    found.append([f"{name}.{inner}", "many", many])
    kept: list[list[Any]] = []
    for entry in found:
        if len(json.dumps([*kept, entry])) > LABELS_BUDGET:
            return kept, False
        kept.append(entry)
    return kept, True
