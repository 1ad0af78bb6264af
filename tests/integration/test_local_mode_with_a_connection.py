"""Local mode through an ``llm_etl`` connection's server (docker-compose's Ollama; here llama-server)."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import DAG

from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.operators.stage import StageInputOperator
from tests.integration.conftest import SAMPLE
from tests.task_context import task_context


def test_the_connection_server_enriches_the_shard_and_no_model_is_loaded(tmp_path, monkeypatch, llama_server):
    monkeypatch.setenv(
        "AIRFLOW_CONN_LLM_COMPOSE",
        json.dumps(
            {
                "conn_type": "llm_etl",
                "host": llama_server.url,
                "password": "not-needed-but-sent",
                "extra": {"api": "openai", "model": llama_server.model_name},
            }
        ),
    )
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:3]))
    local: dict[str, Any] = {"execution_mode": "local", "local_dir": str(tmp_path / "staging")}
    with DAG("llm_enrichment", schedule=None):
        stage = StageInputOperator(task_id="stage", input_path=str(source), **local)
        (shard,) = stage.execute({"run_id": "r1"})
        enrich = LocalEnrichmentOperator(
            task_id="enrich",
            shard=shard,
            model=llama_server.model_name,
            template="{review}",
            llm_conn_id="llm_compose",
            local_dir=local["local_dir"],
        )
        extract = ExtractResultsOperator(
            task_id="extract", shard=shard, output_path=str(tmp_path / "out"), **local
        )
    assert enrich.execute(task_context("r1")) == {"shard": 0, "exit_code": 0}
    assert not list((tmp_path / "staging").rglob("llm-server.log"))  # no llama-server of its own
    summary = extract.execute({"run_id": "r1"})
    assert summary["records"] == 3
    published = (tmp_path / "out" / "llm_enrichment" / "r1" / "shard-00000" / "results.jsonl").read_text()
    results = [json.loads(line) for line in published.splitlines()]
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
