"""The example DAG end to end in local mode: real operators, worker, model and transport."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"


@pytest.fixture(scope="module")
def local_dag(tmp_path_factory):
    staging = tmp_path_factory.mktemp("staging")
    patch = pytest.MonkeyPatch()
    patch.setenv("LLM_ETL_EXECUTION_MODE", "local")
    patch.setenv("LLM_ETL_LOCAL_DIR", str(staging))
    from airflow.utils.db import initdb

    initdb()
    sys.modules.pop("llm_enrichment", None)
    sys.path.insert(0, str(REPO / "dags"))
    module = importlib.import_module("llm_enrichment")
    yield module.llm_enrichment(), staging  # the decorated function builds the DAG
    sys.path.remove(str(REPO / "dags"))
    patch.undo()


def test_the_dag_enriches_every_record_and_leaves_nothing_behind(tmp_path, local_dag):
    dag, staging = local_dag
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:6]))
    run = dag.test(
        run_conf={
            "input_path": str(source),
            "output_path": str(tmp_path / "out"),
            "model": "smollm2",
            "template": "{review}",
        }
    )
    assert run.state == "success"
    (shard_dir,) = list((tmp_path / "out").glob("*/shard-00000"))
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["records"] == 6
    assert manifest["task"] == "sentiment"
    assert (shard_dir / "_SUCCESS").exists()
    results = [json.loads(line) for line in (shard_dir / "results.jsonl").read_text().splitlines()]
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    assert list(staging.iterdir()) == []  # the teardown removed the shards and the key
