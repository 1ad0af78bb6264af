"""Trigger-form Params for the worker's settings, built from their declaration in
:mod:`llm_etl_provider.contract.invocation`: a DAG spells no default, choice or range of a worker flag."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from llm_etl_provider.contract.invocation import default_of, setting_schema

_DECLARED: Any = object()


def worker_param(
    name: str, *, title: str, description: str, default: Any = _DECLARED, **schema: Any
) -> Param:
    """A Param for the worker setting ``name``, with its declared default, type, choices and range.

    :param title: the trigger form's label
    :param description: the form's help text
    :param default: a value instead of the declared default
    :param schema: JSON schema that narrows the declaration where another step bounds the setting too (the
        stage's largest record), or shapes the form (``format="multiline"``)
    """
    value = default_of(name) if default is _DECLARED else default
    if isinstance(value, tuple):  # a list setting's default, as JSON holds it
        value = list(value)
    return Param(value, title=title, description=description, **{**setting_schema(name), **schema})
