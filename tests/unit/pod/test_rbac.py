"""``llm-etl render-rbac``: the run namespace, Airflow's ServiceAccount, the Role and its RoleBinding, as YAML
for ``kubectl apply -f -``; and the development cluster prepares its namespace with exactly these.
``tests/integration/test_rbac.py`` applies them to a real API server."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from llm_etl_provider.cli import main

RBAC = "rbac.authorization.k8s.io"
VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]


def render(capsys, *argv: str) -> list[dict]:
    assert main(["render-rbac", *argv]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_the_role_grants_the_operators_calls_and_nothing_more(capsys):
    """Pinned: a rule added or dropped is a change of what an administrator grants Airflow."""
    role = next(d for d in render(capsys, "--namespace", "runs") if d["kind"] == "Role")
    assert role["metadata"] == {"name": "llm-etl-airflow", "namespace": "runs"}
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        *(("", "pods", verb) for verb in ("create", "get", "list", "patch", "delete")),
        ("", "pods/log", "get"),
        ("", "events", "list"),
        ("", "events", "watch"),
        *(("", "secrets", verb) for verb in ("create", "get", "list", "update", "delete")),
        *(("", "persistentvolumeclaims", verb) for verb in ("create", "get", "list", "delete")),
        *(("networking.k8s.io", "networkpolicies", verb) for verb in ("create", "list", "delete")),
    }


def test_by_default_a_service_account_of_the_run_namespace_is_made_and_bound(capsys):
    documents = render(capsys, "--namespace", "runs")
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("Namespace", "runs"),  # first: kubectl applies in order
        ("ServiceAccount", "llm-etl-airflow"),
        ("Role", "llm-etl-airflow"),
        ("RoleBinding", "llm-etl-airflow"),
    ]
    namespace, account, _, binding = documents
    assert namespace["metadata"]["labels"] == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    assert account["metadata"]["namespace"] == binding["metadata"]["namespace"] == "runs"
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "Role", "name": "llm-etl-airflow"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llm-etl-airflow", "namespace": "runs"}]


def test_airflow_s_own_service_accounts_users_and_groups_are_bound_not_made(capsys):
    """Airflow in a namespace of its own (its Helm chart makes its ServiceAccounts), or outside the cluster
    with a user's or a group's credentials."""
    documents = render(
        capsys, "--namespace", "runs", "--service-account-namespace", "airflow",
        "--service-account", "airflow-worker", "--service-account", "airflow-triggerer",
        "--user", "etl-bot", "--group", "etl-admins",
    )  # fmt: skip
    # no ServiceAccount: `kubectl delete -f` of this output must not delete Airflow's own
    assert [d["kind"] for d in documents] == ["Namespace", "Role", "RoleBinding"]
    assert documents[-1]["subjects"] == [
        {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"},
        {"kind": "ServiceAccount", "name": "airflow-triggerer", "namespace": "airflow"},
        {"kind": "User", "name": "etl-bot", "apiGroup": RBAC},
        {"kind": "Group", "name": "etl-admins", "apiGroup": RBAC},
    ]


def test_a_service_account_namespace_that_is_the_run_namespace_is_the_default(capsys):
    given = render(
        capsys, "--namespace", "runs", "--service-account-namespace", "runs", "--service-account", "a"
    )
    assert [d["kind"] for d in given] == ["Namespace", "ServiceAccount", "Role", "RoleBinding"]
    assert given == render(capsys, "--namespace", "runs", "--service-account", "a")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(capsys, version):
    argv = ("--namespace", "runs", "--user", "u", "--group", "g", "--service-account", "a")
    for document in render(capsys, *argv):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_development_cluster_prepares_its_namespace_with_what_render_rbac_prints(capsys, tmp_path):
    """The e2e tests' Airflow identity is what the README tells an administrator to apply."""
    from llm_etl_dev.cluster import DevCluster
    from llm_etl_dev.cluster.control_plane import AIRFLOW_USER, NAMESPACE

    ensured: list[tuple[str, dict]] = []

    class Recording:
        def ensure(self, path: str, body: dict) -> None:
            ensured.append((path, body))

    DevCluster(tmp_path)._prepare_namespace(Recording())  # type: ignore[arg-type]
    printed = render(capsys, "--namespace", NAMESPACE, "--user", AIRFLOW_USER)
    assert [body for _, body in ensured[: len(printed)]] == printed
    assert [path for path, _ in ensured[: len(printed)]] == [
        "/api/v1/namespaces",
        "/api/v1/namespaces/llm-etl/serviceaccounts",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/llm-etl/roles",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/llm-etl/rolebindings",
    ]
