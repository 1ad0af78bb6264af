"""The demo: the example DAG in local execution mode, run with ``dag.test()``, then a short summary and the
run's report (``report.html``, which the run's publishing writes beside its manifest).

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

from upath import UPath

from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.config import env_var
from llm_etl_provider.contract.layout import run_output_folder, run_scope
from llm_etl_provider.transport import report

SAMPLE = Path("examples/drug_reviews_sample.jsonl")
DAG_FILE = Path("dags/llm_enrichment.py")
DEMO_TASK = "sentiment"
LABEL_FIELD = "rating_label"  # the sample's own label, which the report's agreement compares with


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
    """Run the example DAG locally over ``input_path``; print a summary and where the run's report is;
    return an exit code."""
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
            "label_field": LABEL_FIELD,
        }
    )
    if run.state != "success":
        print(f"error: the DAG run ended {run.state}; see the task logs above", file=sys.stderr)
        return 1
    # the task group's id is the DAG's default, llm_enrichment
    run_dir = published / run_output_folder(run_scope(dag.dag_id, "llm_enrichment"), run.run_id)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print("\n".join(summary_lines(manifest, run_dir)))
    print(f"published: {run_dir}/ (shard-*/: results, dead letters, manifest, _SUCCESS)")
    print(f"report: {(run_dir / manifest['report']).resolve().as_uri()}")
    return 0


def summary_lines(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    """A few lines on the run published in ``run_dir`` (its ``manifest``), from what its report reads."""
    facts = report.collect(manifest, UPath(run_dir))
    totals = report.merge_summaries(list(facts.summaries.values()))
    lines = [
        f"run {manifest['run_id']} {manifest['state']}: {manifest['records']} records, {manifest['results']} "
        f"results, {manifest['dead_letters']} dead letters, {len(manifest['shards'])} shards",
        f"throughput: {totals['records_per_s']} records/s, {totals['tokens_per_s']} tokens/s over "
        f"{totals['elapsed_s']} s",
    ]
    latency = facts.latency
    if latency.count:
        lines.append(
            "latency: "
            + ", ".join(f"p{round(q * 100)} {latency.percentile(q) or 0:.3f} s" for q in report.PERCENTILES)
        )
    agreement = facts.agreement
    if agreement is not None and agreement.compared:
        lines.append(
            f"agreement of {agreement.output_field} with {facts.label_field}: {agreement.agreed} of "
            f"{agreement.compared} ({agreement.agreed / agreement.compared:.1%})"
        )
    return lines
