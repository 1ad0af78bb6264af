"""What the benchmarks share: the sample, the worker's command, inputs of any size, measuring in a child
process and the report's form."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from itertools import count, islice
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"
WORKER = Path(sys.executable).parent / "llm-etl-worker"


def sample_records(records: int) -> Iterator[dict[str, Any]]:
    """The sample's drug reviews, cycled to ``records``; past the first cycle, ids get the cycle's number."""
    reviews = [json.loads(line) for line in SAMPLE.read_text().splitlines()]

    def cycles() -> Iterator[dict[str, Any]]:
        for cycle in count():
            for review in reviews:
                yield review if cycle == 0 else {**review, "id": f"{review['id']}-{cycle}"}

    return islice(cycles(), records)


def write_records(path: Path, records: int) -> Path:
    """Write ``records`` sample records to ``path`` as JSONL."""
    with path.open("w") as handle:
        for record in sample_records(records):
            handle.write(json.dumps(record) + "\n")
    return path


CHILD_TEMPLATE = """
import json, resource, sys, time
{code}
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started, cpu_started = time.monotonic(), cpu_seconds()
result = run(*sys.argv[1:])
seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu_started
peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{**result, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb}}))
"""


def measure_in_child(code: str, *args: str) -> dict[str, Any]:
    """Run ``code``'s ``run(*args)`` in a fresh Python, so that its peak RSS is its own.

    Returns what ``run`` returned (a dict) with its ``seconds`` and ``cpu_seconds``, and the child's
    ``peak_rss_mb`` (Python and its imports included).
    """
    done = subprocess.run(
        [sys.executable, "-c", CHILD_TEMPLATE.format(code=code), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as help, and ``--json`` for the results file."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here too")
    return parser


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1) -> None:
    """Print a Markdown table; the first ``text_columns`` are left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    print()
    for cells in (header, align, *rows):
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def save(path: Path | None, report: Any) -> None:
    """Write the report as JSON where ``--json`` says, if it says."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")
