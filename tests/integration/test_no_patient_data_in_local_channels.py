"""Patient data stays in the results, on the channels that local execution and the worker itself have: the LLM
server's log, the worker's container log, the task log, and a worker that crashes mid-run.

The Kubernetes channels (XCom, rendered fields, pod specs, events, the deferrable trigger's periodic logs) are
checked in ``tests/e2e/test_no_patient_data_leaks.py`` and ``tests/unit/operators/test_enrichment.py``.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import DAG

from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.operators.stage import StageInputOperator
from tests.integration.conftest import SAMPLE, worker
from tests.task_context import task_context

CANARY = "CANARY-PT-51d0e2"


def planted(tmp_path, count: int):
    lines = [json.loads(line) for line in SAMPLE.read_text().splitlines() if len(line) < 400][:count]
    for n, record in enumerate(lines):
        record["review"] = f"Patient {CANARY}-name-{n} writes: {record['review']}"
        record["id"] = f"{CANARY}-id-{n}"
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return source


def test_the_server_log_the_container_log_and_the_task_log_hold_no_canary(tmp_path, capfd):
    source = planted(tmp_path, 3)
    local: dict[str, Any] = {"execution_mode": "local", "local_dir": str(tmp_path / "staging")}
    with DAG("llm_enrichment", schedule=None):
        (shard,) = StageInputOperator(task_id="stage", input_path=str(source), **local).execute(
            {"run_id": "r1"}
        )
        enrich = LocalEnrichmentOperator(
            task_id="enrich", shard=shard, model="smollm2", template="{review}", local_dir=local["local_dir"]
        )
        extract = ExtractResultsOperator(
            task_id="extract", shard=shard, output_path=str(tmp_path / "out"), **local
        )
    assert enrich.execute(task_context("r1"))["exit_code"] == 0
    extract.execute({"run_id": "r1"})
    (server_log,) = (tmp_path / "staging").rglob("llm-server.log")
    (container_log,) = (tmp_path / "staging").rglob("container-try-*.log")
    assert "slot" in server_log.read_text(errors="replace")  # the server did log its work
    assert CANARY not in server_log.read_text(errors="replace")
    assert CANARY not in container_log.read_text(errors="replace")
    assert CANARY not in "".join(capfd.readouterr())
    published = (tmp_path / "out" / "llm_enrichment" / "r1" / "shard-00000" / "results.jsonl").read_text()
    assert published.count(CANARY) == 3  # where it belongs: the checks above can fail


def test_a_worker_that_crashes_mid_run_prints_one_line_without_the_canary(tmp_path, llama_server):
    """Its results cannot be written (a full disk): the crash names the error's type and place, only."""
    source = planted(tmp_path, 2)
    done = worker(
        "--task", "sentiment", "--input", source,
        "--output", "/dev/full", "--dead-letter", tmp_path / "d.jsonl",
        "--llm-url", llama_server.url, "--model", llama_server.model_name, "--template", "{review}",
        "--checkpoint-every", "1",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    crash = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(crash) == 1, done.stderr
    assert crash[0].startswith("error: unexpected OSError at llm_etl_provider."), done.stderr
    assert "Traceback" not in done.stderr
    assert CANARY not in done.stdout + done.stderr
