"""Benchmark: the stage at scale (P3): its time and peak memory against the input size, and where time goes.

Runs ``StageInputOperator`` in local mode (each size in a child process of its own, for its peak RSS) over
``--sizes`` drug-review records, then times its two passes over the input on their own: the validation (the
worker's record reader over the whole input: JSON parsing, the duplicate-id index) and the sharding (gzip).
Run it on an otherwise idle machine.

    .venv/bin/python -m benchmarks.bench_stage [--sizes 1000,100000] [--json out.json]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import arguments, measure_in_child, print_table, save, write_records
from llm_etl_provider.formats.records import RecordReader
from llm_etl_provider.staging.cutting import plan_shards

STAGE = """
from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.operators.stage import StageInputOperator

def run(source, staging):
    stage = StageInputOperator(
        task_id="stage", input_path=source, execution_mode=LOCAL_MODE, local_dir=staging
    )
    shards = stage.execute({"run_id": "bench"})
    return {"shards": len(shards), "records": sum(s["records"] for s in shards)}
"""


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def measure(work: Path, records: int) -> dict[str, float | int]:
    source = write_records(work / f"input-{records}.jsonl", records)
    stage = measure_in_child(STAGE, str(source), str(work / f"staging-{records}"))
    assert stage["records"] == records, stage
    return {
        "records": records,
        "input_mb": round(source.stat().st_size / 1e6, 1),
        "shards": stage["shards"],
        "stage_seconds": round(stage["seconds"], 2),
        "validation_seconds": round(timed(lambda: sum(1 for _ in RecordReader(source))), 2),
        "sharding_seconds": round(timed(lambda: sum(1 for _ in plan_shards(source))), 2),
        "stage_peak_rss_mb": round(stage["peak_rss_mb"], 1),
    }


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--sizes", default="1000,100000", help="comma-separated record counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(Path(tmp), int(size)) for size in args.sizes.split(",")]
    print_table(
        ["records", "input MB", "shards", "stage s", "validation s", "sharding s", "stage peak RSS MB"],
        [[f"{run['records']:,}", *list(run.values())[1:]] for run in runs],
        text_columns=0,
    )
    save(args.json, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
