"""A worker setting's Param is its declaration: default, type, choices and range."""

from __future__ import annotations

import pytest

from llm_etl_provider.contract.invocation import default_of, setting_schema
from llm_etl_provider.params import worker_param


def test_a_worker_param_has_the_declared_default_type_and_range():
    param = worker_param("max_dead_letter_ratio", title="Share", description="A share")
    assert param.value == default_of("max_dead_letter_ratio")
    assert param.schema == {**setting_schema("max_dead_letter_ratio"), "title": "Share"}
    assert param.description == "A share"


def test_an_example_default_and_a_narrower_range_are_its_own():
    param = worker_param("max_record_bytes", default=500, maximum=1000, title="Record", description="Bytes")
    assert param.value == 500
    assert (param.schema["minimum"], param.schema["maximum"]) == (
        setting_schema("max_record_bytes")["minimum"],
        1000,
    )


def test_a_list_settings_default_is_a_list_of_names():
    """Lists travel as JSON in a run's conf: the form shows one name a line."""
    param = worker_param("entity_types", title="Types", description="Entity types")
    assert param.value == list(default_of("entity_types"))
    assert param.schema["items"] == {"type": "string"}
    assert worker_param("categories", title="Categories", description="Categories").value is None


def test_only_a_worker_setting_has_one():
    with pytest.raises(ValueError, match="'input' is not a worker setting"):
        worker_param("input", title="Input", description="The input")
