"""Benchmark (issue 28): the whole pipeline's efficiency, against the server's raw capacity in the same run.

1. Starts the GPU-like simulator (``llm-etl-dev batching-server``: continuous batching, ``--max-num-seqs``
   sequences, an 8B model's latency on one H100) in a process of its own.
2. Its raw capacity, measured as a user would with a load generator that is not ours: ``hey``
   (``scripts/build-hey.sh`` builds it from its Go module) posts the worker's own request body for a
   sentiment record, ``--in-flight`` at once; requests/s and hey's CPU per request.
3. The example DAG in local execution (``dag.test``, an ``llm_etl`` connection to the simulator,
   ``concurrency`` = ``--in-flight``) over ``--records`` drug reviews, as JSONL and as Parquet (written by
   pyarrow): records/s from the run's start to its end; each step's seconds apart (stage, enrich, extract,
   publish, cleanup, from Airflow's database); the worker processes' CPU per record.
4. Efficiency: the run's records/s ÷ the raw requests/s.

Run it from the repository root on an otherwise idle machine (two cores: the simulator, hey and the worker
share them; a second busy process distorts every figure).

    .venv/bin/python -m benchmarks.bench_efficiency [--records 100000] [--in-flight 256] [--json out.json]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, arguments, print_table, sample_records, save
from llm_etl_dev.batching_server import BatchingModel, BatchingServer
from llm_etl_provider.config import env_var
from llm_etl_provider.worker.clients import ChatRequest, OpenAIClient
from llm_etl_provider.worker.tasks import task_for

STEPS = ("stage", "shards", "enrich", "extract", "publish", "cleanup")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hey_binary() -> str:
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-hey.sh")], capture_output=True, text=True, check=True
    )
    return built.stdout.strip().splitlines()[-1]


def request_body(model: str) -> bytes:
    """The worker's own request for a sentiment record of the sample."""
    task = task_for("sentiment", template="{review}")
    record = next(sample_records(1))
    request = ChatRequest(
        system=task.system_prompt, user=task.template.render(record), schema=task.answer_schema,
        schema_name=task.name, max_tokens=task.max_tokens, temperature=0.0,
    )  # fmt: skip
    client = OpenAIClient(None, "http://unused", model, response_format="json_schema")  # type: ignore[arg-type]
    return json.dumps(client.request_body(request)).encode()


def raw_capacity(hey: str, url: str, body: Path, in_flight: int, requests: int) -> dict[str, Any]:
    """``hey``'s requests/s against the server, and its CPU per request."""
    before = children_cpu()
    done = subprocess.run(
        [hey, "-n", str(requests), "-c", str(in_flight), "-m", "POST", "-T", "application/json",
         "-D", str(body), "-o", "csv", f"{url}/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cpu = children_cpu() - before
    rows = [line.split(",") for line in done.stdout.splitlines()[1:] if line]
    ok = [row for row in rows if row[6] == "200"]  # response-time,DNS,...,status-code,offset
    offsets = [float(row[7]) + float(row[0]) for row in rows]
    elapsed = max(offsets) if offsets else 0.0
    return {
        "requests": len(rows),
        "ok": len(ok),
        "requests_per_s": round(len(ok) / elapsed, 1) if elapsed else None,
        "elapsed_s": round(elapsed, 2),
        "cpu_ms_per_request": round(1000 * cpu / max(len(rows), 1), 3),
    }


def write_input(path: Path, records: int, parquet: bool) -> Path:
    rows = sample_records(records)
    if not parquet:
        with path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path, row_group_size=10_000)
    return path


def run_dag(work: Path, source: Path, model: str, in_flight: int) -> dict[str, Any]:
    """The example DAG over ``source``: its wall time, each step's seconds, the workers' CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llm_enrichment", REPO / "dags" / "llm_enrichment.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["llm_enrichment"] = module
    spec.loader.exec_module(module)
    dag = module.llm_enrichment()
    cpu_before = children_cpu()
    started = time.monotonic()
    run = dag.test(
        run_conf={
            "input_path": str(source), "output_path": str(work / f"out-{source.suffix[1:]}"), "model": model,
            "template": "{review}", "concurrency": in_flight, "max_dead_letter_ratio": 1,
        }
    )  # fmt: skip
    wall = time.monotonic() - started
    worker_cpu = children_cpu() - cpu_before
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
        seconds: dict[str, float] = defaultdict(float)
        for ti in instances:
            if ti.start_date is not None and ti.end_date is not None:
                seconds[ti.task_id.rsplit(".", 1)[-1]] += (ti.end_date - ti.start_date).total_seconds()
        shards = sum(1 for ti in instances if ti.task_id.endswith(".enrich"))
    manifest = json.loads(next((work / f"out-{source.suffix[1:]}").glob("*/*/*/manifest.json")).read_text())
    return {
        "state": str(run.state),
        "records": manifest["records"],
        "results": manifest["results"],
        "shards": shards,
        "wall_s": round(wall, 1),
        "records_per_s": round(manifest["records"] / wall, 1),
        "steps_s": {step: round(seconds.get(step, 0.0), 1) for step in STEPS},
        "worker_cpu_ms_per_record": round(1000 * worker_cpu / max(manifest["records"], 1), 3),
    }


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--raw-requests", type=int, default=20_000)
    parser.add_argument("--formats", default="jsonl,parquet")
    args = parser.parse_args()
    hey = hey_binary()
    report: dict[str, Any] = {
        "records": args.records,
        "in_flight": args.in_flight,
        "machine_cpus": os.cpu_count(),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        BatchingServer(BatchingModel(max_num_seqs=args.in_flight)) as server,
    ):
        work = Path(tmp)
        body = work / "body.json"
        body.write_bytes(request_body(server.model_name))
        report["raw"] = raw_capacity(hey, server.url, body, args.in_flight, args.raw_requests)
        home = work / "airflow-home"
        home.mkdir()
        os.environ.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
                env_var("execution_mode"): "local",
                env_var("local_dir"): str(work / "staging"),
                env_var("llm_conn_id"): "llm_etl_bench",
                "AIRFLOW_CONN_LLM_ETL_BENCH": json.dumps(
                    {"conn_type": "llm_etl", "host": server.url, "extra": {"api": "openai"}}
                ),
            }
        )
        from airflow.utils.db import initdb

        initdb()
        report["runs"] = {}
        for fmt in args.formats.split(","):
            source = write_input(work / f"reviews.{fmt}", args.records, parquet=fmt == "parquet")
            measured = run_dag(work, source, server.model_name, args.in_flight)
            raw = report["raw"]["requests_per_s"]
            measured["efficiency"] = round(measured["records_per_s"] / raw, 3) if raw else None
            report["runs"][fmt] = measured
    print_table(
        ["input", "records/s", "raw req/s", "efficiency", "shards", "stage s", "enrich s", "extract s",
         "publish s", "cleanup s", "worker CPU ms/rec"],
        [
            [fmt, r["records_per_s"], report["raw"]["requests_per_s"], r["efficiency"], r["shards"],
             r["steps_s"]["stage"], r["steps_s"]["enrich"], r["steps_s"]["extract"], r["steps_s"]["publish"],
             r["steps_s"]["cleanup"], r["worker_cpu_ms_per_record"]]
            for fmt, r in report["runs"].items()
        ],
    )  # fmt: skip
    print(f"hey: {report['raw']['cpu_ms_per_request']} ms CPU per request at {args.in_flight} in flight")
    save(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
