"""Benchmark (issue 28): Parquet in and out stay streaming: peak memory against the file's size.

In a fresh Python each (so that its peak RSS is its own): the stage's conversion of a Parquet input of
``--sizes`` rows (drug reviews, row groups of 10,000, written by pyarrow) to JSON lines, and the extraction's
writing of as many result lines as Parquet. Memory bounded by a row group means the same peak RSS at every
size.

    .venv/bin/python -m benchmarks.bench_parquet [--sizes 10000,100000,1000000] [--json out.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import arguments, measure_in_child, print_table, sample_records, save

CONVERT = """
from pathlib import Path
from llm_etl_provider.formats.parquet import parquet_to_jsonl
def run(source, target):
    return {"rows": parquet_to_jsonl(Path(source), Path(target))}
"""

WRITE = """
import functools, json
from pathlib import Path
from llm_etl_provider.formats.parquet import write_parquet
def lines(path):
    with open(path, "rb") as handle:
        for raw in handle:
            yield json.loads(raw)
def run(source, target):
    return {"rows": write_parquet(functools.partial(lines, source), Path(target))}
"""


SCHEMA = pa.schema(
    [("id", pa.string()), ("drug", pa.string()), ("review", pa.string()), ("rating", pa.int64())]
)


def write_input(path: Path, rows: int) -> None:
    """``rows`` reviews as Parquet, written a row group at a time (this process stays small too)."""
    batch: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for record in sample_records(rows):
            batch.append({name: record.get(name, 5) for name in SCHEMA.names})
            if len(batch) == 10_000:
                writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))


def write_results(path: Path, rows: int) -> None:
    meta = {"model": "m", "latency_s": 0.1, "prompt_tokens": 90, "completion_tokens": 6}
    with path.open("w") as out:
        for n, record in enumerate(sample_records(rows), 1):
            line = {
                "id": record["id"],
                "line": n,
                "task": "sentiment",
                "enrichment": {"sentiment": "positive"},
                "meta": meta,
                "input": {"drug": record["drug"], "rating": 5},
            }
            out.write(json.dumps(line) + "\n")


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    report: dict[str, Any] = {"in": {}, "out": {}}
    for rows in (int(size) for size in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            write_input(work / "in.parquet", rows)
            converted = measure_in_child(CONVERT, str(work / "in.parquet"), str(work / "rows.jsonl"))
            converted["parquet_mb"] = round((work / "in.parquet").stat().st_size / 1e6, 1)
            converted["jsonl_mb"] = round((work / "rows.jsonl").stat().st_size / 1e6, 1)
            report["in"][rows] = converted
            (work / "rows.jsonl").unlink()
            write_results(work / "results.jsonl", rows)
            written = measure_in_child(WRITE, str(work / "results.jsonl"), str(work / "results.parquet"))
            written["jsonl_mb"] = round((work / "results.jsonl").stat().st_size / 1e6, 1)
            written["parquet_mb"] = round((work / "results.parquet").stat().st_size / 1e6, 1)
            report["out"][rows] = written
    print_table(
        ["rows", "in: Parquet MB", "JSONL MB", "s", "peak RSS MB", "out: JSONL MB", "Parquet MB", "s",
         "peak RSS MB"],
        [
            [rows, i["parquet_mb"], i["jsonl_mb"], round(i["seconds"], 1), round(i["peak_rss_mb"]),
             o["jsonl_mb"], o["parquet_mb"], round(o["seconds"], 1), round(o["peak_rss_mb"])]
            for (rows, i), o in zip(report["in"].items(), report["out"].values(), strict=True)
        ],
    )  # fmt: skip
    save(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
