"""``llm-etl render-rbac``'s objects on a real kube-apiserver (the development cluster's control plane,
without its node): applied server-side, as ``kubectl apply --server-side -f -`` applies them, the subjects
they bind may do what the operators do in the run namespace and nothing outside it (the API server's
SubjectAccessReview), and the namespace refuses a privileged pod (PodSecurity admission) but admits the
provider's pods."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from llm_etl_dev.cluster import DevCluster
from llm_etl_dev.cluster.control_plane import AIRFLOW_USER, NAMESPACE
from llm_etl_provider.pod.rbac import AIRFLOW_RULES
from tests.integration.conftest import BIN

RUNS = "etl-runs"  # Airflow in the run namespace: the ServiceAccount rendered there
SHARED = "etl-shared"  # Airflow in its namespace `airflow`, and outside the cluster as a user or a group
SHARED_ARGS = (
    "--service-account-namespace", "airflow", "--service-account", "airflow-worker",
    "--service-account", "airflow-triggerer", "--user", "etl-bot", "--group", "etl-admins",
)  # fmt: skip
AUTHENTICATED = "system:authenticated"
RBAC_GROUP = "rbac.authorization.k8s.io"


def service_account(namespace: str, name: str) -> tuple[str, list[str]]:
    """The user and groups the API server gives a ServiceAccount's token."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED]
    return f"system:serviceaccount:{namespace}:{name}", groups


# subject -> (the run namespace its binding is in, its user name and groups)
SUBJECTS = {
    "the development cluster's airflow user": (NAMESPACE, (AIRFLOW_USER, [AUTHENTICATED])),
    "the run namespace's ServiceAccount": (RUNS, service_account(RUNS, "llm-etl-airflow")),
    "Airflow's workers' ServiceAccount": (SHARED, service_account("airflow", "airflow-worker")),
    "Airflow's triggerer's ServiceAccount": (SHARED, service_account("airflow", "airflow-triggerer")),
    "a user": (SHARED, ("etl-bot", [AUTHENTICATED])),
    "a group": (SHARED, ("someone", ["etl-admins", AUTHENTICATED])),
}


def render(*argv: str) -> list[dict[str, Any]]:
    """What the ``llm-etl`` command prints for ``argv``."""
    printed = subprocess.run([BIN / "llm-etl", *argv], capture_output=True, text=True, check=True, timeout=60)
    return list(yaml.safe_load_all(printed.stdout))


def apply(dynamic: DynamicClient, documents: list[dict[str, Any]]) -> None:
    """Apply ``documents`` server-side, in order, as an administrator's ``kubectl apply --server-side``."""
    for document in documents:
        resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        dynamic.server_side_apply(resource, body=document, field_manager="llm-etl-test-admin")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[DevCluster]:
    """etcd and kube-apiserver with the development cluster's namespace, without the node."""
    cluster = DevCluster(tmp_path_factory.mktemp("control-plane"))
    cluster.up(node=False)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def admin(cluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(str(cluster.admin_kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def dynamic(admin, tmp_path_factory) -> DynamicClient:
    return DynamicClient(admin, cache_file=str(tmp_path_factory.mktemp("discovery") / "cache.json"))


@pytest.fixture(scope="module")
def applied(dynamic) -> None:
    apply(dynamic, render("render-rbac", "--namespace", RUNS))
    apply(dynamic, render("render-rbac", "--namespace", SHARED, *SHARED_ARGS))


def allowed(admin: client.ApiClient, user: str, groups: list[str], attributes: dict[str, str]) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
    }
    answer = client.AuthorizationV1Api(admin).create_subject_access_review(review)
    return bool(answer.status.allowed)


def needed(namespace: str) -> list[dict[str, str]]:
    """Every call the Role is there for, in ``namespace``."""
    calls = []
    for group, resources, verbs in AIRFLOW_RULES:
        for resource in resources:
            kind, _, subresource = resource.partition("/")
            where = {"namespace": namespace, "group": group, "resource": kind, "subresource": subresource}
            calls += [{**where, "verb": verb} for verb in verbs]
    return calls


def outside(namespace: str) -> list[dict[str, str]]:
    """Calls no bound subject may make: another namespace's objects, the cluster's, a way into a container,
    a token, a grant, and what the Role leaves out in its own namespace."""
    others = [other for other in ("default", RUNS, SHARED, NAMESPACE) if other != namespace]
    calls = [
        {"namespace": other, "resource": resource, "verb": verb}
        for other in others
        for resource, verb in (("secrets", "get"), ("secrets", "list"), ("pods", "create"), ("pods", "get"))
    ]
    calls += [
        {"resource": "nodes", "verb": "list"},
        {"resource": "namespaces", "verb": "delete", "name": namespace},
        {"resource": "namespaces", "verb": "update", "name": namespace},  # its Pod Security labels
        {"resource": "persistentvolumes", "verb": "create"},
        {"group": RBAC_GROUP, "resource": "clusterrolebindings", "verb": "create"},
    ]
    mine = [
        ("", "pods", "exec", "create"),
        ("", "pods", "exec", "get"),  # a WebSocket exec is a GET
        ("", "pods", "attach", "create"),
        ("", "pods", "portforward", "create"),
        ("", "pods", "ephemeralcontainers", "patch"),
        ("", "pods", "", "update"),
        ("", "secrets", "", "watch"),
        ("", "configmaps", "", "get"),
        ("", "serviceaccounts", "token", "create"),
        ("", "serviceaccounts", "", "create"),
        (RBAC_GROUP, "roles", "", "create"),
        (RBAC_GROUP, "roles", "", "escalate"),
        (RBAC_GROUP, "rolebindings", "", "create"),
        ("apps", "deployments", "", "create"),
        ("networking.k8s.io", "networkpolicies", "", "update"),
    ]
    calls += [
        {"namespace": namespace, "group": group, "resource": resource, "subresource": sub, "verb": verb}
        for group, resource, sub, verb in mine
    ]
    return calls


@pytest.mark.usefixtures("applied")
@pytest.mark.parametrize("subject", SUBJECTS)
def test_a_bound_subject_may_do_what_the_operators_do_in_its_namespace_and_nothing_outside(admin, subject):
    namespace, (user, groups) = SUBJECTS[subject]
    refused = [call for call in needed(namespace) if not allowed(admin, user, groups, call)]
    assert refused == []
    granted = [call for call in outside(namespace) if allowed(admin, user, groups, call)]
    assert granted == []


@pytest.mark.usefixtures("applied")
def test_a_subject_bound_nowhere_may_do_none_of_it(admin):
    stranger = service_account(RUNS, "default")  # the pods' own identity, in the run namespace
    for user, groups in (stranger, ("stranger", [AUTHENTICATED])):
        for namespace in (NAMESPACE, RUNS, SHARED):
            assert [call for call in needed(namespace) if allowed(admin, user, groups, call)] == []


def test_the_development_cluster_s_namespace_holds_what_render_rbac_prints(dynamic):
    """The e2e tests run Airflow as the identity the README tells an administrator to bind; applying the
    README's command there again conflicts with nothing."""
    printed = render("render-rbac", "--namespace", NAMESPACE, "--user", AIRFLOW_USER)
    assert [d["kind"] for d in printed] == ["Namespace", "ServiceAccount", "Role", "RoleBinding"]

    def held() -> list[dict[str, Any]]:
        objects = []
        for document in printed:
            resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
            metadata = document["metadata"]
            found = resource.get(name=metadata["name"], namespace=metadata.get("namespace")).to_dict()
            # what the API adds: status, uid, timestamps, managed fields, the namespace's name label
            labels = found["metadata"].get("labels", {})
            labels.pop("kubernetes.io/metadata.name", None)
            kept = {key: found["metadata"][key] for key in ("name", "namespace") if key in found["metadata"]}
            objects.append(
                {
                    **{key: found[key] for key in document if key != "metadata"},
                    "metadata": {**kept, **({"labels": labels} if labels else {})},
                }
            )
        return objects

    assert held() == printed
    apply(dynamic, printed)
    assert held() == printed


@pytest.mark.usefixtures("applied")
def test_the_namespace_refuses_a_privileged_pod_and_admits_the_provider_s_pods(admin, cluster):
    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    # the ServiceAccount the pods run as, which kube-controller-manager (not running here) would make
    client.CoreV1Api(admin).create_namespaced_service_account(RUNS, {"metadata": {"name": "default"}})
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(admin).create_namespaced_pod(RUNS, privileged, dry_run="All")
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]
    airflow = config.new_client_from_config(str(cluster.admin_kubeconfig))
    user, _ = service_account(RUNS, "llm-etl-airflow")
    airflow.set_default_header("Impersonate-User", user)  # the groups of a ServiceAccount come with it
    try:
        with pytest.raises(client.ApiException) as forbidden:
            client.CoreV1Api(airflow).list_namespaced_secret("default")
        assert forbidden.value.status == 403  # the impersonation holds: this is Airflow, not the admin
        documents = render(
            "render-pod", "--namespace", RUNS, "--worker-image", "registry.example.com/llm-etl/worker:0.1.0"
        )
        pods = [d for d in documents if d["kind"] == "Pod"]
        assert len(pods) == 2  # the enrichment pod and, for the default `pull` source, the model-cache pod
        for pod in pods:
            created = client.CoreV1Api(airflow).create_namespaced_pod(RUNS, pod, dry_run="All")
            assert created.metadata.name == pod["metadata"]["name"]
        for policy in (d for d in documents if d["kind"] == "NetworkPolicy"):
            client.NetworkingV1Api(airflow).create_namespaced_network_policy(RUNS, policy, dry_run="All")
    finally:
        airflow.close()
