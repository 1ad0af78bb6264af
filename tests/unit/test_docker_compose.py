"""docker-compose.yaml parses and holds together: services, connections, the store, the model and the DAG."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from airflow.models.connection import Connection

from llm_etl_provider.hooks.llm_server import LLMServerHook
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.pod.builder import BACKENDS

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}|\$\$")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ``${NAME}``, ``${NAME:-default}`` and ``$$``."""
    if isinstance(value, str):
        return VARIABLE.sub(
            lambda m: "$" if m[0] == "$$" else env.get(m["name"]) or (m["default"] or ""), value
        )
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load((REPO / "docker-compose.yaml").read_text()), env or {})  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return compose()["services"]  # type: ignore[no-any-return]


def airflow_env(services: dict[str, Any]) -> dict[str, str]:
    return services["airflow-scheduler"]["environment"]  # type: ignore[no-any-return]


def connection(services: dict[str, Any], conn_id: str) -> Connection:
    raw = airflow_env(services)[f"AIRFLOW_CONN_{conn_id.upper()}"]
    return Connection.from_json(raw, conn_id=conn_id)


def test_the_stack_has_airflow_postgres_ollama_and_an_s3_store(services):
    assert set(services) >= {"postgres", "airflow-init", "ollama", "minio", "minio-init", *AIRFLOW_SERVICES}
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == [command]
        assert services[name]["image"] == services["airflow-init"]["image"]
        assert services[name]["environment"] == airflow_env(services)  # one shared configuration
        assert "healthcheck" in services[name]
    assert services["airflow-init"]["command"] == ["db", "migrate"]


def test_dependencies_exist_and_wait_for_the_right_condition(services):
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on a missing service {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s missing healthcheck"
            elif rule["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job"
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))


def test_airflow_reaches_its_database_api_and_dags(services):
    env = airflow_env(services)
    database = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.username, database.password, database.path.strip("/")) == (
        "postgres",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert api.hostname == "airflow-apiserver"
    assert f"{api.port}:{api.port}" in services["airflow-apiserver"]["ports"]
    mounts = dict(v.split(":")[:2] for v in services["airflow-scheduler"]["volumes"])
    assert mounts["./dags"] == env["AIRFLOW__CORE__DAGS_FOLDER"]
    assert mounts["staging"] == env["AIRFLOW__LLM_ETL__LOCAL_DIR"]
    assert "/opt/airflow/.kube" in mounts.values()


def test_the_connections_match_the_dag_and_the_services(services, monkeypatch):
    env = airflow_env(services)
    assert connection(services, "kubernetes_default").conn_type == "kubernetes"
    assert (
        connection(services, "kubernetes_default").extra_dejson["namespace"]
        == env["AIRFLOW__LLM_ETL__NAMESPACE"]
    )

    aws = connection(services, "aws_default")
    minio = services["minio"]
    endpoint = urlsplit(aws.extra_dejson["endpoint_url"])
    assert aws.conn_type == "aws"
    assert endpoint.hostname == "minio"
    assert f":{endpoint.port}" in minio["command"]
    assert (aws.login, aws.password) == (
        minio["environment"]["MINIO_ROOT_USER"],
        minio["environment"]["MINIO_ROOT_PASSWORD"],
    )
    init = " ".join(services["minio-init"]["command"])
    for default in ("AIRFLOW__LLM_ETL__DEFAULT_INPUT", "AIRFLOW__LLM_ETL__DEFAULT_OUTPUT"):
        path = urlsplit(env[default])
        assert path.scheme == "s3"
        assert path.username == "aws_default"  # ObjectStoragePath's conn_id@bucket form
        assert f"mb --ignore-existing store/{path.hostname}" in init
    input_path = urlsplit(env["AIRFLOW__LLM_ETL__DEFAULT_INPUT"])
    uploaded = re.search(r"mc cp /examples/(\S+) store/(\S+)", init)
    assert uploaded is not None
    assert f"store/{input_path.hostname}{input_path.path}" == f"store/{uploaded[2]}"
    assert (REPO / "examples" / uploaded[1]).is_file()

    llm = connection(services, env["AIRFLOW__LLM_ETL__LLM_CONN_ID"])
    monkeypatch.setenv(f"AIRFLOW_CONN_{llm.conn_id.upper()}", llm.as_json())
    server = LLMServerHook(llm.conn_id).get_server()
    assert urlsplit(server.base_url).hostname == "ollama"
    assert f"{urlsplit(server.base_url).port}:11434" in services["ollama"]["ports"]
    assert server.model == env["AIRFLOW__LLM_ETL__DEFAULT_MODEL"] == services["ollama-pull"]["command"][-1]


def test_the_images_match_the_lock_and_the_pod(services):
    assert services["ollama"]["image"] == BACKENDS["ollama"].image  # the same Ollama as in the pods
    assert services["ollama-pull"]["image"] == BACKENDS["ollama"].image
    build = services["airflow-scheduler"]["build"]
    dockerfile = (REPO / build["context"] / build["dockerfile"]).read_text()
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: p.get("version") for p in lock["package"]}
    assert f"ARG AIRFLOW_VERSION={locked['apache-airflow']}" in dockerfile
    assert "/opt/llm-etl-provider" in dockerfile
    worker = (REPO / "docker" / "worker.Dockerfile").read_text()
    # the worker's only dependencies, as locked (pyarrow: a Parquet input's row groups)
    for package in ("httpx", "jsonschema", "cryptography", "pyarrow"):
        assert f'"{package}=={locked[package]}"' in worker
    assert "USER 65532:65532" in worker  # the pod's runAsUser


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_the_example_dag_parses_with_the_compose_environment(services, monkeypatch, mode):
    for name, value in airflow_env(compose({"AIRFLOW__LLM_ETL__EXECUTION_MODE": mode})["services"]).items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("llm_enrichment", REPO / "dags" / "llm_enrichment.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.llm_enrichment()
    enrich = dag.get_task("llm_enrichment.shard.enrich")
    if mode == "local":
        assert type(enrich) is LocalEnrichmentOperator
        assert enrich.llm_conn_id == "llm_etl_default"
    else:
        assert type(enrich) is LLMEnrichmentOperator
    # the DAG's settings reach it through Airflow's configuration ([llm_etl]), and through nothing else
    assert [name for name in airflow_env(services) if name.startswith("LLM_ETL_")] == []
    assert dag.params["input_path"] == airflow_env(services)["AIRFLOW__LLM_ETL__DEFAULT_INPUT"]
    assert dag.params["model"] == airflow_env(services)["AIRFLOW__LLM_ETL__DEFAULT_MODEL"]


def test_every_named_volume_of_airflow_mounts_where_the_image_makes_a_folder_airflow_owns(services):
    """A new named volume takes the owner of the image's folder it mounts on; where the image has none it is
    root's, and Airflow (uid 50000) could not write its passwords file or its staging there."""
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text()
    made = re.search(
        r"RUN mkdir -p (?P<paths>[^\\\n]+)\\\s*&& chown airflow:0 (?P<owned>[^\\\n]+)", dockerfile
    )
    assert made, "the Dockerfile makes no folders for the volumes"
    owned = set(made["paths"].split()) & set(made["owned"].split())
    named = set(compose()["volumes"])
    for name in AIRFLOW_SERVICES:
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source in named:
                assert target in owned, f"{name}: volume {source} mounts on {target}, which the image lacks"
    assert services["airflow-apiserver"]["user"].startswith("50000:")
