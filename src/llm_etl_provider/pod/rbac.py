"""What Airflow's Kubernetes identity needs in the run namespace, and nothing more.

``llm-etl render-rbac`` prints these objects, for the cluster's administrator to ``kubectl apply -f -``:

- the run namespace, labelled to enforce the restricted Pod Security Standard (the pods are built for it);
- a ServiceAccount for Airflow's workers and triggerer, when Airflow runs in the run namespace (a
  ServiceAccount of another namespace, Airflow's own, is its deployment's: it is bound, never rendered);
- the Role: the calls of the operators and of KubernetesPodOperator, sync and deferrable, in that namespace;
- the RoleBinding of the Role to those ServiceAccounts and to any users and groups (an Airflow outside the
  cluster).

The development cluster applies exactly these, bound to its ``llm-etl-airflow`` user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLE_NAME = "llm-etl-airflow"  # the Role's and the RoleBinding's name
SERVICE_ACCOUNT_NAME = "llm-etl-airflow"  # the ServiceAccount rendered when none is named
RBAC_API = "rbac.authorization.k8s.io"
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}

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


def run_namespace(namespace: str) -> dict[str, Any]:
    """The run namespace, enforcing the restricted Pod Security Standard."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": dict(POD_SECURITY_LABELS)},
    }


def airflow_role(namespace: str) -> dict[str, Any]:
    """The Role, as a manifest."""
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "Role",
        "metadata": {"name": ROLE_NAME, "namespace": namespace},
        "rules": [
            {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
            for group, resources, verbs in AIRFLOW_RULES
        ],
    }


def rbac_manifests(
    namespace: str,
    *,
    service_accounts: Sequence[str] = (SERVICE_ACCOUNT_NAME,),
    service_account_namespace: str | None = None,
    users: Sequence[str] = (),
    groups: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The namespace, the ServiceAccounts that live in it, the Role and its RoleBinding, in the order to apply
    them.

    :param namespace: the run namespace
    :param service_accounts: Airflow's ServiceAccounts (its workers' and triggerer's), bound to the Role
    :param service_account_namespace: where those ServiceAccounts live (default: the run namespace, where
        they are rendered); another namespace's are bound only
    :param users: users bound to the Role (an Airflow outside the cluster, by its credentials' user name)
    :param groups: groups bound to the Role
    """
    accounts_namespace = service_account_namespace or namespace
    subjects = [
        {"kind": "ServiceAccount", "name": name, "namespace": accounts_namespace} for name in service_accounts
    ]
    subjects += [{"kind": "User", "name": name, "apiGroup": RBAC_API} for name in users]
    subjects += [{"kind": "Group", "name": name, "apiGroup": RBAC_API} for name in groups]
    owned = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
        for name in service_accounts
        if accounts_namespace == namespace
    ]
    binding = {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ROLE_NAME, "namespace": namespace},
        "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": ROLE_NAME},
        "subjects": subjects,
    }
    return [run_namespace(namespace), *owned, airflow_role(namespace), binding]
