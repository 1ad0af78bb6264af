"""Airflow's own LLM batch API on your own model: ``@task.llm_batch(model_id="llm-etl:<model>")``.

The ``common.ai`` provider's decorator hands the prompts to the ``llm-etl`` batch adapter (the
``common-ai`` extra of this provider), which runs them as the provider's job: the worker beside the model's
server, every answer constrained and validated by ``Sentiment``'s JSON schema, the results read back
verified. Rows land as JSONL under ``result_path`` (``custom_id``, ``index``, ``status``, ``output``,
``usage``, ...); the manifest is the task's XCom. Where the batch runs is the deployment's ``[llm_etl]``:
Kubernetes execution runs a pod per shard serving the model itself (``backend``, ``model_source``, ...);
local execution (``execution_mode = local``) runs local processes, through the server ``llm_etl_default``
names (its host; none: the bundled model).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from airflow.sdk import ObjectStoragePath, Param, dag, task
from pydantic import BaseModel

from llm_etl_provider.config import LLMEtlConfig

try:
    import airflow.providers.common.ai  # noqa: F401 - the provider of @task.llm_batch
except ImportError as missing:
    raise ImportError(
        "dags/llm_batch.py needs Airflow's common.ai provider: pip install 'llm-etl-provider[common-ai]'"
    ) from missing

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drug_reviews_sample.jsonl"
# The model the connection's server serves ([llm_etl] default_model); the bundled one in local mode without it
DEPLOYMENT = LLMEtlConfig.from_airflow()
MODEL = DEPLOYMENT.default_model or "smollm2"
# [llm_etl] deferrable, where set: the triggerer polls the batch; else Airflow's own default
DEFERRABLE = {} if DEPLOYMENT.deferrable is None else {"deferrable": DEPLOYMENT.deferrable}


class Sentiment(BaseModel):
    """The answer every prompt must give."""

    sentiment: Literal["positive", "negative", "neutral"]


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "model": Param(MODEL, type="string", title="Model", description="What the LLM server serves"),
        "reviews": Param(8, type="integer", minimum=1, maximum=600, title="Reviews", description="How many"),
        "result_path": Param(type="string", title="Result folder", description="Any URI; rows land here"),
    },
)
def llm_batch() -> None:
    @task.llm_batch(  # type: ignore[attr-defined]  # common.ai's decorator, registered by its provider
        model_id="llm-etl:{{ params.model }}",
        llm_conn_id="llm_etl_default",
        result_path="{{ params.result_path }}/{{ run_id }}",
        system_prompt="Classify the sentiment of the drug review.",
        output_type=Sentiment,
        max_tokens=32,
        poll_interval=30,  # the least common.ai allows: a small model's batch ends in seconds
        **DEFERRABLE,
    )
    def classify(params: dict[str, Any]) -> list[str]:
        with SAMPLE.open() as reviews:
            return [
                json.loads(line)["review"] for _, line in zip(range(params["reviews"]), reviews, strict=False)
            ]

    @task
    def count(manifest: dict[str, Any]) -> dict[str, int]:
        """Read the rows back: the XCom is only the manifest."""
        labels: dict[str, int] = {}
        for line in ObjectStoragePath(manifest["result_uri"]).read_text().splitlines():
            row = json.loads(line)
            label = row["output"]["sentiment"] if row["status"] == "success" else row["status"]
            labels[label] = labels.get(label, 0) + 1
        return labels

    count(classify())


llm_batch()
