"""Benchmark: the Airflow side's share of a run (P3) — stage, extract and cleanup against the whole DAG run.

Runs the example DAG in local execution mode (the demo's way: ``dag.test()``, the bundled SmolLM2 served by
llama.cpp, the worker writing sealed frames, the verified extraction) over ``--records`` drug reviews; past
the sample's 600, reviews repeat under new ids. Reads each task instance's duration from Airflow's database
and reports them with their share of the run's wall-clock time. Run it from the repository root on an
otherwise idle machine.

    .venv/bin/python -m benchmarks.bench_pipeline [--records 1000] [--json out.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks.common import arguments, print_table, save, write_records
from llm_etl_dev.demo import run_demo

AIRFLOW_SIDE = ("stage", "shards", "extract", "publish", "cleanup")


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = write_records(work / "input.jsonl", args.records)
        if run_demo(work / "out", input_path=source) != 0:
            return 1
        from airflow.models import DagRun, TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            run = session.query(DagRun).filter_by(dag_id="llm_enrichment").one()
            instances = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
            assert run.start_date is not None
            assert run.end_date is not None
            total = (run.end_date - run.start_date).total_seconds()
            seconds: dict[str, float] = defaultdict(float)
            shards: dict[str, int] = defaultdict(int)
            for ti in instances:
                task = ti.task_id.rsplit(".", 1)[-1]
                assert ti.start_date is not None
                assert ti.end_date is not None
                seconds[task] += (ti.end_date - ti.start_date).total_seconds()
                shards[task] += 1
    airflow_side = sum(seconds[task] for task in AIRFLOW_SIDE)
    report = {
        "records": args.records,
        "run_seconds": round(total, 1),
        "tasks": {task: {"seconds": round(s, 2), "instances": shards[task]} for task, s in seconds.items()},
        "airflow_side_seconds": round(airflow_side, 2),
        "airflow_side_share": round(airflow_side / total, 4),
    }
    print_table(
        ["task", "instances", "seconds", f"share of the run ({total:.0f} s)"],
        [[task, shards[task], f"{s:.1f}", f"{s / total:.2%}"] for task, s in seconds.items()]
        + [["stage + extract + cleanup", "", f"{airflow_side:.1f}", f"{airflow_side / total:.2%}"]],
    )
    save(args.json, report)
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
