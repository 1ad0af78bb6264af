"""The example DAGs parse, and wire the operators as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llm_etl_provider.contract.invocation import default_of, setting_schema
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.staging.cutting import SECRET_LIMIT, largest_record

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load(name: str, monkeypatch, mode: str):
    monkeypatch.setenv("LLM_ETL_EXECUTION_MODE", mode)
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)()


@pytest.mark.parametrize("mode", ["kubernetes", "local"])
def test_enrichment_dag_shape(monkeypatch, mode):
    dag = load("llm_enrichment", monkeypatch, mode)
    ids = {t.task_id for t in dag.tasks}
    steps = ("stage", "shards", "shard.enrich", "shard.extract", "publish", "cleanup")
    # Kubernetes with the example's `pull` source: the model-cache pod downloads the model, no enrichment pod
    cached = ("cache_model",) if mode == "kubernetes" else ()
    assert ids == {f"llm_enrichment.{n}" for n in (*steps, *cached)}
    # what Airflow clears with one shard's enrichment, by its own rule: the setups (stage and model cache)
    # and the teardown; the model claim and the staging are made again before the shard runs
    cleared = dag.partial_subset(["llm_enrichment.shard.enrich"], include_upstream=False)
    assert set(cleared.task_dict) == {
        f"llm_enrichment.{n}" for n in ("stage", *cached, "shard.enrich", "cleanup")
    }
    cleanup = dag.get_task("llm_enrichment.cleanup")
    assert cleanup.is_teardown
    assert dag.get_task("llm_enrichment.stage").is_setup
    assert dag.get_task("llm_enrichment.stage").downstream_task_ids >= {"llm_enrichment.shards"}
    # per shard: a shard's extraction waits for its own enrichment only, and runs after a failed one too
    extract = dag.get_task("llm_enrichment.shard.extract")
    assert extract.upstream_task_ids == {"llm_enrichment.shards", "llm_enrichment.shard.enrich"}
    assert extract.trigger_rule == "all_done"
    assert dag.get_task("llm_enrichment.publish").trigger_rule == "all_done"
    # a cleared shard reruns its setup (the stage): its enrichment waits for it, and the teardown for every
    # enrichment, so that the staging is never removed under a shard that works again
    assert dag.get_task("llm_enrichment.shard.enrich").upstream_task_ids >= {"llm_enrichment.stage"}
    assert dag.get_task("llm_enrichment.cleanup").upstream_task_ids >= {
        "llm_enrichment.publish",
        "llm_enrichment.shard.enrich",
    }
    assert dag.get_task("llm_enrichment.publish").retries == 2
    expected = {"input_path", "output_path", "task", "template", "model", "shard_bytes"}
    assert set(dag.params) >= expected | {"concurrency", "system_prompt", "schema"}
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    assert type(enrich) is (LocalEnrichmentOperator if mode == "local" else LLMEnrichmentOperator)
    (asset,) = dag.get_task("llm_enrichment.publish").outlets  # one event per run, after every shard
    assert asset.name == "llm-etl/llm_enrichment/llm_enrichment"  # scoped by DAG: no other DAG's event
    assert not dag.get_task("llm_enrichment.shard.extract").outlets


def test_sweeper_dag(monkeypatch):
    dag = load("llm_etl_sweeper", monkeypatch, "kubernetes")
    (task,) = dag.tasks
    assert task.ttl_seconds == 3600


def test_shards_beyond_the_gpus_queue_in_an_airflow_pool(monkeypatch):
    """More shards than GPUs became Pending pods that failed at the start-up timeout: with a pool of a slot
    per GPU, the shards beyond them wait in Airflow."""
    monkeypatch.setenv("LLM_ETL_GPU_POOL", "llm-etl-gpus")
    monkeypatch.setenv("LLM_ETL_GPUS", "2")
    enrich = load("llm_enrichment", monkeypatch, "kubernetes").get_task("llm_enrichment.shard.enrich")
    assert (enrich.pool, enrich.pool_slots) == ("llm-etl-gpus", 2)
    assert set(load("llm_enrichment", monkeypatch, "kubernetes").params) >= {"parallel", "concurrency"}


@pytest.mark.parametrize("mode", ["kubernetes", "local"])
def test_every_param_is_titled_and_described_and_none_is_idle_in_the_mode(monkeypatch, mode):
    params = load("llm_enrichment", monkeypatch, mode).params
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title"), f"{name} has no title"
        assert param.description, f"{name} has no description"
    # local execution serves the bundled model with llama.cpp: no choice of server to offer
    assert ("backend" in params) == (mode == "kubernetes")


@pytest.mark.parametrize("mode", ["kubernetes", "local"])
def test_the_worker_settings_params_are_the_flags_declaration(monkeypatch, mode):
    """The trigger form re-spells no worker default, choice or range; the stage's sizes are its own."""
    params = load("llm_enrichment", monkeypatch, mode).params
    settings = {
        "task": "task",
        "max_dead_letter_ratio": "max_dead_letter_ratio",
        "concurrency": "concurrency",
        "record_bytes": "max_record_bytes",
        "system_prompt": "system_prompt",
    }
    for param_name, setting in settings.items():
        param = params.get_param(param_name)
        assert param.value == default_of(setting), param_name
        declared = setting_schema(setting)
        assert {key: param.schema[key] for key in declared} == declared, param_name
    assert params.get_param("record_bytes").schema["maximum"] == largest_record(SECRET_LIMIT)
    assert params.get_param("shard_bytes").schema["maximum"] == SECRET_LIMIT


def test_the_label_column_reaches_the_worker_and_is_unset_by_default(monkeypatch):
    """The run's report compares the model's label with the input's own where the trigger names its field."""
    dag = load("llm_enrichment", monkeypatch, "local")
    param = dag.params.get_param("label_field")
    assert param.value is None
    assert param.schema["type"] == setting_schema("label_field")["type"]
    assert dag.get_task("llm_enrichment.shard.enrich").label_field == "{{ params.label_field }}"
