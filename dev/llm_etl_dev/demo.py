"""The demo: the example DAG in local execution mode, run with ``dag.test()``, then a readable report.

stage → enrich (the bundled SmolLM2 served by llama.cpp's server, the worker writing sealed frames) → extract
(verified, published under the output folder) → cleanup, on the drug-review sample. Airflow keeps its home and
SQLite database under the output folder, so the demo touches nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from llm_etl_dev.report import build_report, merge_summaries
from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.config import env_var
from llm_etl_provider.contract.layout import run_output_folder, run_scope
from llm_etl_provider.worker.tasks import task_for

SAMPLE = Path("examples/drug_reviews_sample.jsonl")
DAG_FILE = Path("dags/llm_enrichment.py")
DEMO_TASK = "sentiment"


def _prepare_airflow(output: Path) -> None:
    """Point Airflow at a home, database, DAGs folder and execution mode of the demo's own (before import)."""
    home = (output / "airflow-home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent.resolve()),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            # the example DAG's [llm_etl] options
            env_var("execution_mode"): LOCAL_MODE,
            env_var("local_dir"): str((output / "staging").resolve()),
        }
    )


def _load_dag() -> Any:
    spec = importlib.util.spec_from_file_location("llm_enrichment", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.llm_enrichment()


def run_demo(output: Path, *, input_path: Path = SAMPLE, limit: int | None = None) -> int:
    """Run the example DAG locally over ``input_path``; print and write the report; return an exit code."""
    if not input_path.is_file() or not DAG_FILE.is_file():
        print(
            "error: run the demo from the repository root (examples/ and dags/ are needed)", file=sys.stderr
        )
        return 2
    output.mkdir(parents=True, exist_ok=True)
    if limit is not None:
        with input_path.open(encoding="utf-8") as source:
            head = [line for _, line in zip(range(limit), source, strict=False)]
        input_path = output / "input.jsonl"
        input_path.write_text("".join(head), encoding="utf-8")
    _prepare_airflow(output)
    from airflow.utils.db import initdb

    initdb()
    dag = _load_dag()
    published = output / "published"
    run = dag.test(
        run_conf={
            "input_path": str(input_path.resolve()),
            "output_path": str(published.resolve()),
            "model": "smollm2",
            # the review alone: the record's rating and rating_label, which the report compares against,
            # stay out of the prompt
            "template": "{review}",
            "task": DEMO_TASK,
        }
    )
    if run.state != "success":
        print(f"error: the DAG run ended {run.state}; see the task logs above", file=sys.stderr)
        return 1
    # the task group's id is the DAG's default, llm_enrichment
    run_dir = published / run_output_folder(run_scope(dag.dag_id, "llm_enrichment"), run.run_id)
    shards = sorted(run_dir.glob("shard-*"))
    manifests = [json.loads((shard / "manifest.json").read_text()) for shard in shards]
    reference = {}
    with input_path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            reference[record["id"]] = record.get("rating_label")
    report = build_report(
        [shard / "results.jsonl" for shard in shards],
        [shard / "dead_letter.jsonl" for shard in shards],
        merge_summaries([m["worker_summary"] for m in manifests]),
        schema=task_for(DEMO_TASK).schema,
        reference=reference,
    )
    (run_dir / "report.md").write_text(report)
    print(report)
    print(f"published: {run_dir}/ (shard-*/: results, dead letters, manifest, _SUCCESS; report.md)")
    return 0
