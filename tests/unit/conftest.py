"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

from tests.fake_kubernetes import FakeCoreV1
from tests.unit.children import Children


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeCoreV1:
    """The in-memory Kubernetes API (:class:`~tests.fake_kubernetes.FakeCoreV1`), installed as every client
    the provider makes through a Kubernetes connection: CoreV1Api (``KubernetesHook.core_v1_client``) and
    NetworkingV1Api (``backends.kubernetes.networking_v1``, and the cleanup operator's import of it)."""
    fake = FakeCoreV1()
    monkeypatch.setattr(KubernetesHook, "core_v1_client", property(lambda self: fake))
    monkeypatch.setattr("llm_etl_provider.backends.kubernetes.networking_v1", lambda conn_id: fake)
    monkeypatch.setattr("llm_etl_provider.operators.cleanup.networking_v1", lambda conn_id: fake)
    return fake


@pytest.fixture
def children() -> Iterator[Children]:
    """Start Python children (:class:`~tests.unit.children.Children`); those left running are killed."""
    started = Children()
    yield started
    started.close()
