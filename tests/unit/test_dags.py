"""The example DAGs parse, and wire the operators as documented; their deployment settings come from
Airflow's configuration (``[llm_etl]``), never from the environment directly."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from llm_etl_provider.config import LLMEtlConfig, env_var, provider_config
from llm_etl_provider.contract.invocation import default_of, setting_schema
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.staging.cutting import (
    DEFAULT_LOCAL_SHARD_BYTES,
    DEFAULT_SHARD_BYTES,
    LOCAL_SHARD_LIMIT,
    SECRET_LIMIT,
    largest_record,
)
from tests.unit.readme import table

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))


def load(name: str, monkeypatch, mode: str, **options: str):
    """The example DAG ``name`` as the dag-processor parses it, with ``[llm_etl]`` options set through
    Airflow's own variables (``AIRFLOW__LLM_ETL__<OPTION>``)."""
    for option, value in {"execution_mode": mode, **options}.items():
        monkeypatch.setenv(env_var(option), value)
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
    dag = load("llm_enrichment", monkeypatch, "kubernetes", gpu_pool="llm-etl-gpus", gpus="2")
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    assert (enrich.pool, enrich.pool_slots) == ("llm-etl-gpus", 2)
    assert set(dag.params) >= {"parallel", "concurrency"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_example_dag_reads_the_environment(path):
    """A deployment setting has one road: Airflow's configuration (``[llm_etl]``), which reads its own
    ``AIRFLOW__LLM_ETL__*`` variables; a DAG that read ``os.environ`` or ``os.getenv`` would open a second."""
    tree = ast.parse(path.read_text())
    offences = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Import) and any(a.name == "os" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "os")
        or (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"))
    ]
    assert offences == []
    assert "LLM_ETL_" not in path.read_text().replace("AIRFLOW__LLM_ETL__", "")


KUBERNETES_OPTIONS = {
    "namespace": "team-a",
    "kubernetes_conn_id": "k8s_team_a",
    "model_source": "object",
    "model_url_secret": "model-url",
    "model_sha256": "a" * 64,
    "model_path": "m.gguf",
    "model_size": "20Gi",
    "model_cache_access_modes": "ReadWriteMany, ReadOnlyMany",
    "model_cache_storage_class": "efs",
    "worker_image": "registry.example.com/worker@sha256:" + "b" * 64,
    "server_image": "registry.example.com/llama-server:1",
    "image_pull_policy": "IfNotPresent",
    "gpus": "0",
    "deferrable": "true",
    "pod_time_limit_seconds": "7200",
    "startup_timeout_seconds": "600",
    "work_claim_size": "1Gi",
    "work_storage_class": "fast",
    "store_cidrs": "10.0.0.0/8,192.168.0.0/16",
    "checkpoint_every": "7",
    "schedule": "0 2 * * *",
    "default_input": "s3://aws_default@in/records.csv",
    "default_output": "s3://aws_default@out/enriched",
    "default_model": "llama3.2:1b",
}


def test_the_config_options_reach_the_operators_in_kubernetes(monkeypatch):
    dag = load("llm_enrichment", monkeypatch, "kubernetes", **KUBERNETES_OPTIONS)
    stage = dag.get_task("llm_enrichment.stage")
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    cache = dag.get_task("llm_enrichment.cache_model")
    assert type(enrich) is LLMEnrichmentOperator
    assert (stage.namespace, stage.kubernetes_conn_id) == ("team-a", "k8s_team_a")
    assert (enrich.namespace, enrich.kubernetes_conn_id) == ("team-a", "k8s_team_a")
    assert (stage.work_claim_size, stage.work_storage_class) == ("1Gi", "fast")
    assert (stage.store_cidrs, stage.checkpoint_every) == (("10.0.0.0/8", "192.168.0.0/16"), 7)
    for name in ("model_source", "model_url_secret", "model_sha256", "model_path", "model_size"):
        assert getattr(enrich, name) == KUBERNETES_OPTIONS[name], name
    assert (enrich.worker_image, enrich.server_image) == (
        KUBERNETES_OPTIONS["worker_image"],
        KUBERNETES_OPTIONS["server_image"],
    )
    assert (enrich.image_pull_policy, enrich.gpus, enrich.deferrable) == ("IfNotPresent", 0, True)
    assert (enrich.pod_time_limit_seconds, enrich.startup_timeout_seconds) == (7200, 600)
    assert vars(enrich)["checkpoint_every"] == 7  # a worker setting, set by name
    assert cache.cache_access_modes == ("ReadWriteMany", "ReadOnlyMany")
    assert cache.cache_storage_class == "efs"
    assert dag.schedule == "0 2 * * *"
    assert dag.params["input_path"] == "s3://aws_default@in/records.csv"
    assert dag.params["output_path"] == "s3://aws_default@out/enriched"
    assert dag.params["model"] == "llama3.2:1b"


def test_the_config_options_reach_the_operators_in_local_mode(monkeypatch, tmp_path):
    dag = load(
        "llm_enrichment",
        monkeypatch,
        "local",
        local_dir=str(tmp_path),
        llm_conn_id="ollama",
        checkpoint_every="9",
    )
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    assert type(enrich) is LocalEnrichmentOperator
    assert (enrich.local_dir, enrich.llm_conn_id) == (
        str(tmp_path),
        "ollama",
    )
    assert dag.get_task("llm_enrichment.stage").checkpoint_every == 9
    sweep = load("llm_etl_sweeper", monkeypatch, "local", local_dir=str(tmp_path), default_output="s3://o/x")
    (task,) = sweep.tasks
    assert (task.namespace, task.local_dirs, task.output_paths) == (None, [str(tmp_path)], ["s3://o/x"])


def test_the_sweeper_reads_its_own_options(monkeypatch):
    options = {
        "sweep_schedule": "0 * * * *",
        "sweep_ttl_seconds": "60",
        "sweep_outputs": "s3://a/x, s3://b/y",
    }
    dag = load("llm_etl_sweeper", monkeypatch, "kubernetes", namespace="team-a", **options)
    (task,) = dag.tasks
    assert (task.namespace, task.ttl_seconds, task.local_dirs) == ("team-a", 60, [])
    assert task.output_paths == ["s3://a/x", "s3://b/y"]
    assert dag.schedule == "0 * * * *"


def test_without_options_the_dags_take_the_declared_defaults(monkeypatch):
    """Unset, each option is its declaration's default: the DAG passes nothing the operators would not
    default to themselves, and a Param without a deployment default is required in the trigger form."""
    defaults = LLMEtlConfig()
    dag = load("llm_enrichment", monkeypatch, defaults.execution_mode)
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    for name in (
        "model_source",
        "model_path",
        "model_size",
        "worker_image",
        "gpus",
        "pod_time_limit_seconds",
    ):
        assert getattr(enrich, name) == getattr(defaults, name), name
    assert enrich.deferrable is False  # Airflow's [operators] default_deferrable decides
    assert dag.get_task("llm_enrichment.stage").namespace == defaults.namespace
    assert dag.schedule is None
    for name in ("input_path", "output_path", "model"):
        assert not dag.params.get_param(name).has_value, name  # the form asks for it


def test_a_bad_option_fails_the_parse_naming_it(monkeypatch):
    with pytest.raises(ValueError, match=r"\[llm_etl\] gpus \(airflow.cfg or AIRFLOW__LLM_ETL__GPUS\)"):
        load("llm_enrichment", monkeypatch, "kubernetes", gpus="two")
    with pytest.raises(ValueError, match="execution_mode must be one of kubernetes, local"):
        load("llm_enrichment", monkeypatch, "lokal", gpus="1")


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
        "template": "template",
        "categories": "categories",
        "entity_types": "entity_types",
        "max_dead_letter_ratio": "max_dead_letter_ratio",
        "concurrency": "concurrency",
        "record_bytes": "max_record_bytes",
        "system_prompt": "system_prompt",
    }
    for param_name, setting in settings.items():
        param = params.get_param(param_name)
        declared_default = default_of(setting)
        assert param.value == (
            list(declared_default) if isinstance(declared_default, tuple) else declared_default
        )
        declared = setting_schema(setting)
        assert {key: param.schema[key] for key in declared} == declared, param_name
    assert params.get_param("record_bytes").schema["maximum"] == largest_record(SECRET_LIMIT)
    shard_bytes = params.get_param("shard_bytes")
    assert shard_bytes.schema["maximum"] == (SECRET_LIMIT if mode == "kubernetes" else LOCAL_SHARD_LIMIT)
    assert shard_bytes.value == (DEFAULT_SHARD_BYTES if mode == "kubernetes" else DEFAULT_LOCAL_SHARD_BYTES)


def test_the_label_column_reaches_the_worker_and_is_unset_by_default(monkeypatch):
    """The run's report compares the model's label with the input's own where the trigger names its field."""
    dag = load("llm_enrichment", monkeypatch, "local")
    param = dag.params.get_param("label_field")
    assert param.value is None
    assert param.schema["type"] == setting_schema("label_field")["type"]
    assert dag.get_task("llm_enrichment.shard.enrich").label_field == "{{ params.label_field }}"


def test_a_schedule_without_the_params_defaults_fails_the_parse(monkeypatch):
    """A scheduled run has no one to fill in the form: Airflow refuses the DAG until the deployment gives the
    input, output and model defaults with the schedule."""
    with pytest.raises(ValueError, match="required params without default values"):
        load("llm_enrichment", monkeypatch, "kubernetes", schedule="0 2 * * *")


def test_the_readme_lists_every_param_of_the_example_dag_with_its_title(monkeypatch):
    dag = load("llm_enrichment", monkeypatch, "kubernetes")
    rows = {row[0]: row for row in table("| Param |")}
    assert sorted(rows) == sorted(f"`{name}`" for name in dag.params)
    for name, param in dag.params.items():
        assert param.schema["title"].startswith(rows[f"`{name}`"][1]), name


def test_the_readme_lists_every_llm_etl_option_with_its_default():
    declared = provider_config()["llm_etl"]["options"]
    rows = table("| option |")
    assert [row[0] for row in rows] == [f"`{name}`" for name in declared]
    for row, option in zip(rows, declared.values(), strict=True):
        assert row[1] == (f"`{option['default']}`" if option["default"] else ""), row[0]
