"""Maintenance: delete what llm-etl runs that never reached their cleanup left (pods, Secrets, work claims;
in local execution, the staging under ``LLM_ETL_LOCAL_DIR``) once Airflow says their run ended, and the
decrypted staging that killed extractions left under the output folders (``LLM_ETL_SWEEP_OUTPUTS``,
comma-separated; default: the enrichment DAG's ``LLM_ETL_DEFAULT_OUTPUT``). A running run is never touched."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag

from llm_etl_provider.backends import DEFAULT_LOCAL_DIR, EXAMPLE_NAMESPACE, LOCAL_MODE
from llm_etl_provider.operators.cleanup import SweepExpiredOperator

OUTPUTS = os.environ.get("LLM_ETL_SWEEP_OUTPUTS") or os.environ.get("LLM_ETL_DEFAULT_OUTPUT") or ""
LOCAL = os.environ.get("LLM_ETL_EXECUTION_MODE") == LOCAL_MODE


@dag(
    dag_id="llm_etl_sweeper",
    schedule=os.environ.get("LLM_ETL_SWEEP_SCHEDULE", "*/15 * * * *"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["llm-etl", "maintenance"],
    is_paused_upon_creation=False,
)
def llm_etl_sweeper() -> None:
    SweepExpiredOperator(
        task_id="sweep",
        namespace=None if LOCAL else os.environ.get("LLM_ETL_NAMESPACE", EXAMPLE_NAMESPACE),
        ttl_seconds=int(os.environ.get("LLM_ETL_TTL_SECONDS", "3600")),
        output_paths=[p.strip() for p in OUTPUTS.split(",") if p.strip()],
        # the enrichment DAG's local_dir (its default): shards and keys in plain files
        local_dirs=[os.environ.get("LLM_ETL_LOCAL_DIR", DEFAULT_LOCAL_DIR)] if LOCAL else [],
    )


llm_etl_sweeper()
