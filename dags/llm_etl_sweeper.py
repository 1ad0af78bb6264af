"""Maintenance: delete what llm-etl runs that never reached their cleanup left (pods, Secrets, work claims;
in local execution, the staging under ``[llm_etl] local_dir``) once Airflow says their run ended, and the
decrypted staging that killed extractions left under the output folders (``[llm_etl] sweep_outputs``,
default: the enrichment DAG's ``default_output``). A running run is never touched. Its settings are the
provider's section ``[llm_etl]`` of Airflow's configuration, as the enrichment DAG's are."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag

from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.config import LLMEtlConfig
from llm_etl_provider.operators.cleanup import SweepExpiredOperator

CONFIG = LLMEtlConfig.from_airflow()  # [llm_etl]
LOCAL = CONFIG.execution_mode == LOCAL_MODE
OUTPUTS = CONFIG.sweep_outputs or ((CONFIG.default_output,) if CONFIG.default_output else ())


@dag(
    dag_id="llm_etl_sweeper",
    schedule=CONFIG.sweep_schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["llm-etl", "maintenance"],
    is_paused_upon_creation=False,
)
def llm_etl_sweeper() -> None:
    SweepExpiredOperator(
        task_id="sweep",
        namespace=None if LOCAL else CONFIG.namespace,
        kubernetes_conn_id=CONFIG.kubernetes_conn_id,
        ttl_seconds=CONFIG.sweep_ttl_seconds,
        output_paths=list(OUTPUTS),
        # the enrichment DAG's local_dir: shards and keys in plain files
        local_dirs=[CONFIG.local_dir] if LOCAL else [],
    )


llm_etl_sweeper()
