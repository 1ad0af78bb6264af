"""The smallest DAG that enriches your own records: copy it into your DAGs folder and trigger it.

Your file, your field names: ``input_path`` is a JSONL or CSV file (plain or gzip) on any URI Airflow reads
(``s3://``, ``gs://``, ``file://``, a local path), ``id_field`` the field that names each record. With no
``template``, each prompt is the whole record (every field but the id, one ``name: value`` line each); name
fields to send only those, e.g. ``"{subject}\n{body}"``. Where the pods run (namespace, images, GPUs, the
model's source, or local mode) is the deployment's ``[llm_etl]`` configuration (README, "Settings"); each of
those settings can be passed here as an argument instead.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag

from llm_etl_provider.config import LLMEtlConfig
from llm_etl_provider.task_group import llm_enrichment_task_group

DEPLOYMENT = LLMEtlConfig.from_airflow().task_group_arguments()  # [llm_etl]: where and how the model runs


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "input_path": Param(type="string", title="Input", description="A JSONL or CSV file, any URI"),
        "output_path": Param(type="string", title="Output folder", description="Any URI"),
        "id_field": Param("id", type="string", title="Id field", description="The field naming a record"),
    },
)
def enrich_my_records() -> None:
    llm_enrichment_task_group(
        input_path="{{ params.input_path }}",
        output_path="{{ params.output_path }}",
        id_field="{{ params.id_field }}",
        task="sentiment",  # or tags (with categories=[...]), moderation, entities, custom (prompt + schema)
        model="llama3.2:3b",  # the model your LLM server serves
        **DEPLOYMENT,
    )


enrich_my_records()
