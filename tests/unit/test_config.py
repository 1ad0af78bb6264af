"""The provider's ``[llm_etl]`` section: declared once, listed by Airflow, read typed from Airflow's
configuration."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from llm_etl_provider.backends import DEFAULT_LOCAL_DIR, EXAMPLE_NAMESPACE, EXECUTION_MODES
from llm_etl_provider.config import SECTION, LLMEtlConfig, env_var, provider_config
from llm_etl_provider.contract.invocation import default_of
from llm_etl_provider.contract.layout import (
    DEFAULT_CACHE_ACCESS_MODES,
    DEFAULT_GPUS,
    DEFAULT_POD_TIME_LIMIT_SECONDS,
)
from llm_etl_provider.get_provider_info import get_provider_info

OPTIONS = [item.name for item in dataclasses.fields(LLMEtlConfig)]


class Conf:
    """Airflow's configuration as far as the reader uses it: the options set, else the caller's fallback (a
    process in which Airflow has not loaded the providers' defaults)."""

    def __init__(self, **values: str) -> None:
        self.values = values

    def get(self, section: str, key: str, **kwargs: Any) -> Any:
        assert section == SECTION
        return self.values.get(key, kwargs["fallback"])


def test_every_option_is_described_to_airflow_as_providers_describe_theirs():
    (section,) = provider_config().values()
    assert section["description"]
    assert list(section["options"]) == OPTIONS
    for name, option in section["options"].items():
        assert set(option) == {"description", "version_added", "type", "example", "default"}, name
        assert option["description"].endswith("."), name
        assert option["type"] in ("string", "integer", "boolean"), name
        assert isinstance(option["default"], str), name  # Airflow holds text; empty: no default
    assert get_provider_info()["config"] == provider_config()


def test_the_declarations_import_no_airflow_which_reads_them_while_it_loads_its_configuration():
    """Airflow calls get_provider_info while it initializes its configuration: a provider's metadata that
    imported Airflow made a cycle (``import llm_etl_provider.config`` first failed with an ImportError)."""
    script = (
        "import sys\n"
        "import llm_etl_provider.config, llm_etl_provider.get_provider_info\n"
        "assert 'airflow' not in sys.modules, 'the declarations imported Airflow'\n"
        "from airflow.sdk.configuration import conf\n"
        "print(conf.get('llm_etl', 'execution_mode'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == LLMEtlConfig().execution_mode


def test_the_defaults_are_the_packages_own():
    """Each default is written once, where the argument it feeds takes it."""
    options = provider_config()[SECTION]["options"]
    assert options["execution_mode"]["default"] == "kubernetes"
    assert options["namespace"]["default"] == EXAMPLE_NAMESPACE
    assert options["local_dir"]["default"] == DEFAULT_LOCAL_DIR
    assert options["worker_image"]["default"] == ""  # none is published: each deployment gives its own
    assert options["gpus"]["default"] == str(DEFAULT_GPUS)
    assert options["model_cache_access_modes"]["default"] == ",".join(DEFAULT_CACHE_ACCESS_MODES)
    assert options["checkpoint_every"]["default"] == str(default_of("checkpoint_every"))
    assert options["pod_time_limit_seconds"]["default"] == str(DEFAULT_POD_TIME_LIMIT_SECONDS)
    assert options["deferrable"]["default"] == ""  # Airflow's [operators] default_deferrable
    assert LLMEtlConfig.read(Conf()) == LLMEtlConfig()


def test_airflow_lists_the_options_with_their_defaults():
    """The provider's section is part of Airflow's configuration (``airflow config get-value llm_etl ...``):
    what is declared here is what Airflow answers, unset."""
    from airflow.sdk.configuration import conf

    options = provider_config()[SECTION]["options"]
    for name in OPTIONS:
        assert conf.get(SECTION, name) == options[name]["default"], name


def test_options_are_read_typed_from_airflow_configuration(monkeypatch):
    monkeypatch.setenv(env_var("gpus"), "4")
    monkeypatch.setenv(env_var("deferrable"), "True")
    monkeypatch.setenv(env_var("store_cidrs"), " 10.0.0.0/8 , 192.168.0.0/16,")
    monkeypatch.setenv(env_var("model_claim"), "models")
    config = LLMEtlConfig.from_airflow()
    assert (config.gpus, config.deferrable, config.model_claim) == (4, True, "models")
    assert config.store_cidrs == ("10.0.0.0/8", "192.168.0.0/16")
    assert config.work_claim_size is None  # unset: the task group's own default
    assert env_var("gpus") == "AIRFLOW__LLM_ETL__GPUS"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpus": "one"}, r"\[llm_etl\] gpus \(airflow.cfg or AIRFLOW__LLM_ETL__GPUS\) must be an integer"),
        ({"deferrable": "maybe"}, "deferrable .* must be true or false, not 'maybe'"),
        ({"execution_mode": "cloud"}, f"execution_mode must be one of {', '.join(EXECUTION_MODES)}"),
        ({"image_pull_policy": "always"}, "image_pull_policy must be one of Always, IfNotPresent, Never"),
        ({"model_source": "s3"}, "model_source must be one of pull, pvc, object, image"),
    ],
)
def test_a_bad_value_is_refused_naming_the_option_and_where_it_is_set(values, message):
    with pytest.raises(ValueError, match=message):
        LLMEtlConfig.read(Conf(**values))


def test_an_empty_value_stands_for_the_default():
    """``AIRFLOW__LLM_ETL__NAMESPACE=`` (docker compose's ``${VAR:-}``) is the option unset."""
    config = LLMEtlConfig.read(Conf(namespace="", gpus=" ", model_claim=""))
    assert (config.namespace, config.gpus, config.model_claim) == (EXAMPLE_NAMESPACE, DEFAULT_GPUS, None)
