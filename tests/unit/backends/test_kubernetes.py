from __future__ import annotations

import inspect
import logging

from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from llm_etl_provider.backends import DEFAULT_KUBERNETES_CONN_ID, DEFAULT_NAMESPACE
from llm_etl_provider.backends.kubernetes import KubernetesBackend


def test_a_run_without_a_namespace_or_connection_takes_kubernetes_pod_operator_s():
    """The enrichment's pod is KubernetesPodOperator's; the run's Secrets, claims and policies must go where
    it does, through the same connection."""
    kpo = inspect.signature(KubernetesPodOperator).parameters
    assert DEFAULT_KUBERNETES_CONN_ID == KubernetesHook.default_conn_name == kpo["kubernetes_conn_id"].default
    backend = KubernetesBackend(None, None, dag_id="d", run_id="r", log=logging.getLogger(__name__))
    assert (backend.namespace, backend.kubernetes_conn_id) == (DEFAULT_NAMESPACE, DEFAULT_KUBERNETES_CONN_ID)
