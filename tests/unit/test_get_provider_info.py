from __future__ import annotations

import json
from importlib import resources
from importlib.metadata import entry_points

import jsonschema

from llm_etl_provider.contract.invocation import API_STYLES, RESPONSE_FORMATS, default_of
from llm_etl_provider.get_provider_info import get_provider_info
from llm_etl_provider.hooks.llm_server import LLMServerHook


def test_provider_info_is_registered_and_valid():
    (entry,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("llm_etl_provider")
    ]
    info = entry.load()()
    assert info == get_provider_info()
    schema = json.loads(resources.files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    assert info["package-name"] == "llm-etl-provider"


def test_connection_type_matches_the_hook():
    (conn,) = get_provider_info()["connection-types"]
    assert conn["connection-type"] == LLMServerHook.conn_type == "llm_etl"
    assert conn["hook-class-name"] == f"{LLMServerHook.__module__}.{LLMServerHook.__name__}"
    behaviour = conn["ui-field-behaviour"]
    assert behaviour["relabeling"]["host"] == "Base URL"
    assert set(conn["conn-fields"]) == {"api", "model", "response_format"}


def test_listed_modules_import():
    import importlib

    info = get_provider_info()
    for group in ("hooks", "operators", "triggers"):
        for entry in info.get(group, []):
            for module in entry["python-modules"]:
                importlib.import_module(module)


def test_the_connection_forms_choices_and_defaults_are_the_contracts():
    (conn,) = get_provider_info()["connection-types"]
    fields = conn["conn-fields"]
    assert fields["api"]["schema"]["enum"] == list(API_STYLES)
    assert fields["response_format"]["schema"]["enum"] == list(RESPONSE_FORMATS)
    assert fields["response_format"]["schema"]["default"] == default_of("response_format")
