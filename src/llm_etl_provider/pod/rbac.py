"""The Role that Airflow's Kubernetes identity needs in the run namespace, and nothing more.

``llm-etl render-role`` prints it, for the cluster's administrator to bind to Airflow's identity (the
development cluster binds its ``airflow`` user to exactly this)."""

from __future__ import annotations

from typing import Any

ROLE_NAME = "llm-etl-airflow"

# (API group, resources, verbs): the operators' and KubernetesPodOperator's calls, sync and deferrable
AIRFLOW_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("", ("pods",), ("create", "get", "list", "patch", "delete")),
    ("", ("pods/log",), ("get",)),
    ("", ("events",), ("list", "watch")),
    # the object transport's URL Secrets are replaced with renewed URLs while their pods run
    ("", ("secrets",), ("create", "get", "list", "update", "delete")),
    # the work claims (work_claim_size) and the model claims (pull, object); cleanup and the sweeper
    # look for them in every run, and an enrichment reads its model claim before its pod is made
    ("", ("persistentvolumeclaims",), ("create", "get", "list", "delete")),
    # each shard's pod gets its own NetworkPolicy, removed with the run
    ("networking.k8s.io", ("networkpolicies",), ("create", "list", "delete")),
)


def airflow_role(namespace: str) -> dict[str, Any]:
    """The Role, as a manifest."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": ROLE_NAME, "namespace": namespace},
        "rules": [
            {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
            for group, resources, verbs in AIRFLOW_RULES
        ],
    }
