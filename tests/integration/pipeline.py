"""The pipeline's steps run one after another in local mode, each shard enriched through a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG

from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.operators.stage import StageInputOperator
from tests.task_context import task_context


def local_settings(tmp_path: Path) -> dict[str, Any]:
    return {"execution_mode": "local", "local_dir": str(tmp_path / "staging")}


def stage_enrich_extract(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: Any,
    input_path: str,
    output: str,
    *,
    enrichment: dict[str, Any] | None = None,
    output_format: str = "jsonl",
    **stage: Any,
) -> list[dict[str, Any]]:
    """Stage ``input_path``, then enrich every shard through ``server`` (an ``llm_etl`` connection, any
    dead-letter share allowed, more worker settings in ``enrichment``) and extract it under ``output`` as
    ``output_format``; return the shard descriptors."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_LLM_TEST",
        json.dumps({"conn_type": "llm_etl", "host": server.url, "extra": {"api": "openai", "model": "x"}}),
    )
    local = local_settings(tmp_path)
    with DAG("llm_enrichment", schedule=None):
        shards: list[dict[str, Any]] = StageInputOperator(
            task_id="stage", input_path=input_path, **stage, **local
        ).execute(task_context("r1"))
        for shard in shards:
            LocalEnrichmentOperator(
                task_id=f"enrich_{shard['index']}", shard=shard, model=server.model_name, template="{review}",
                llm_conn_id="llm_test", max_dead_letter_ratio=1, local_dir=local["local_dir"],
                **(enrichment or {}),
            ).execute(task_context("r1"))  # fmt: skip
            ExtractResultsOperator(
                task_id=f"extract_{shard['index']}", shard=shard, output_path=output,
                output_format=output_format, **local,
            ).execute(task_context("r1"))  # fmt: skip
    return shards
