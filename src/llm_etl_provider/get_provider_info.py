"""Provider metadata for Airflow's provider discovery (the ``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from typing import Any

from llm_etl_provider.config import provider_config
from llm_etl_provider.contract.invocation import API_STYLES, CONNECTION_API, RESPONSE_FORMATS, default_of


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "llm-etl-provider",
        "name": "LLM ETL",
        "description": "Enrich records with a local LLM inside your own Kubernetes cluster: "
        "no data egress, no API keys.",
        "integrations": [
            {
                "integration-name": "LLM ETL",
                "external-doc-url": "https://github.com/llm-etl-provider/llm-etl-provider",
                "tags": ["ai"],
            }
        ],
        "hooks": [
            {"integration-name": "LLM ETL", "python-modules": ["llm_etl_provider.hooks.llm_server"]},
        ],
        "operators": [
            {
                "integration-name": "LLM ETL",
                "python-modules": [
                    "llm_etl_provider.operators.stage",
                    "llm_etl_provider.operators.enrichment",
                    "llm_etl_provider.operators.extract",
                    "llm_etl_provider.operators.cleanup",
                ],
            },
        ],
        "triggers": [
            {"integration-name": "LLM ETL", "python-modules": ["llm_etl_provider.triggers.pod"]},
        ],
        "extra-links": ["llm_etl_provider.operators.publish.RunReportLink"],
        "connection-types": [
            {
                "connection-type": "llm_etl",
                "hook-class-name": "llm_etl_provider.hooks.llm_server.LLMServerHook",
                "hook-name": "LLM server (Ollama or OpenAI-compatible)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Base URL", "password": "API key (optional)"},
                    "placeholders": {
                        "host": "http://127.0.0.1:11434 (the server's root, reachable from the worker)",
                        "password": "only for servers that require a bearer key; local servers do not",
                    },
                },
                "conn-fields": {
                    "api": {
                        "label": "API style",
                        "description": "ollama: Ollama's /api/chat; openai: any OpenAI-compatible server "
                        "(llama.cpp, vLLM, SGLang, Modular MAX, Ollama's /v1)",
                        "schema": {"type": "string", "enum": list(API_STYLES), "default": CONNECTION_API},
                    },
                    "model": {
                        "label": "Model",
                        "description": "the model name the server serves, e.g. llama3.2:3b",
                        "schema": {"type": ["string", "null"]},
                    },
                    "response_format": {
                        "label": "Response format (openai)",
                        "description": "json_schema (OpenAI's shape) or json_object "
                        "(llama-cpp-python's server)",
                        "schema": {
                            "type": "string",
                            "enum": list(RESPONSE_FORMATS),
                            "default": default_of("response_format"),
                        },
                    },
                },
            }
        ],
        # [llm_etl]: the example DAGs' deployment settings (airflow.cfg, AIRFLOW__LLM_ETL__*)
        "config": provider_config(),
    }
