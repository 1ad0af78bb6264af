"""KubernetesBackend: a run's Secrets, claims and policies, made, found and deleted by the run's labels; the
sweeper's rule for what runs left; pods measured from their status."""

from __future__ import annotations

import gzip
import inspect
import logging
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from llm_etl_provider.backends import DEFAULT_KUBERNETES_CONN_ID, DEFAULT_NAMESPACE
from llm_etl_provider.backends.kubernetes import KubernetesBackend, pod_timing, sweep
from llm_etl_provider.contract.layout import (
    LABEL_RUN,
    LABEL_RUN_KEY,
    MANAGED_BY,
    label_value,
    run_annotations,
    run_key,
)
from llm_etl_provider.pod.builder import network_policy
from llm_etl_provider.staging.cutting import Shard

LOG = logging.getLogger(__name__)
RUN = "manual__2026-11-24T02:00:00+00:00"


def backend(**kwargs):
    return KubernetesBackend("etl", None, dag_id="llm_enrichment", run_id=RUN, log=LOG, **kwargs)


def shard(index=0):
    data = gzip.compress(b'{"id": 1, "text": "a"}\n')
    return Shard(index=index, data=data, records=1, first_line=1, line_offset=0, input_format="jsonl")


def test_a_run_without_a_namespace_or_connection_takes_kubernetes_pod_operator_s():
    """The enrichment's pod is KubernetesPodOperator's; the run's Secrets, claims and policies must go where
    it does, through the same connection."""
    kpo = inspect.signature(KubernetesPodOperator).parameters
    assert DEFAULT_KUBERNETES_CONN_ID == KubernetesHook.default_conn_name == kpo["kubernetes_conn_id"].default
    defaults = KubernetesBackend(None, None, dag_id="d", run_id="r", log=LOG)
    assert (defaults.namespace, defaults.kubernetes_conn_id) == (
        DEFAULT_NAMESPACE,
        DEFAULT_KUBERNETES_CONN_ID,
    )


def test_cleanup_deletes_exactly_the_runs_objects_by_its_labels(api):
    staged = backend(plan="p1", work_claim_size="1Gi")
    staged.open_plan()
    staged.stage_shard(shard())
    staged.create_network_policy(
        network_policy("enrichment", "pull", name="policy", selected={LABEL_RUN_KEY: staged.run_key})
    )
    ours = {**MANAGED_BY, LABEL_RUN: label_value(RUN), LABEL_RUN_KEY: run_key("llm_enrichment", RUN)}
    api.add_pod("etl", "llm-etl-enrich-a", ours)
    api.add_pod("etl", "llm-etl-enrich-other", {**MANAGED_BY, LABEL_RUN: "another-run"})
    # the same run id in another DAG: not this run's
    api.add_pod("etl", "llm-etl-enrich-b", {**ours, LABEL_RUN_KEY: run_key("another_dag", RUN)})
    api.add_pod("etl", "unrelated", {LABEL_RUN: label_value(RUN)})
    api.add_pod("other-namespace", "elsewhere", ours)

    cleanup = backend()  # the cleanup knows no plan: every plan of the run goes
    assert cleanup.cleanup() == {"pods": 1, "secrets": 2, "claims": 1, "network_policies": 1}
    assert api.objects["secrets"] == api.objects["claims"] == api.objects["network_policies"] == {}
    assert sorted(name for _, name in api.objects["pods"]) == [
        "elsewhere",
        "llm-etl-enrich-b",
        "llm-etl-enrich-other",
        "unrelated",
    ]
    assert cleanup.cleanup() == dict.fromkeys(("pods", "secrets", "claims", "network_policies"), 0)


def test_a_plan_started_afresh_waits_for_its_claim_still_being_deleted(api, monkeypatch):
    """On a cluster a deleted claim lives on, Terminating, until no pod mounts it: kept as the plan's claim,
    it would vanish under the new pod, which then waits for it until its start-up limit."""
    monkeypatch.setattr("llm_etl_provider.backends.kubernetes.time.sleep", lambda _: None)
    staged = backend(plan="p1", work_claim_size="1Gi")
    staged.open_plan()
    claim_name = staged.stage_shard(shard())["work_claim"]
    claim = api.objects["claims"][("etl", claim_name)]
    api.delete_namespaced_secret(staged.key_secret, "etl")  # the key lost: the plan starts afresh
    api.claim_release_reads = 3

    again = backend(plan="p1", work_claim_size="1Gi")
    assert again.open_plan()[1] is True
    assert claim_name in api.terminating_claims  # deleted with the plan, still there
    assert again.stage_shard(shard())["work_claim"] == claim_name
    assert claim_name not in api.terminating_claims
    assert api.objects["claims"][("etl", claim_name)] is not claim  # made anew, once the old one went


def test_the_sweep_removes_only_ended_or_expired_runs_and_never_a_live_one(api):
    """It deleted everything older than the TTL, whatever its run's state: a healthy run over an hour lost its
    pods and Secrets; later, a run still running past its deadline. Now Airflow's state of the run decides;
    only a run Airflow does not know goes by its recorded deadline."""
    old = datetime.now(UTC) - timedelta(hours=2)
    future, past = time.time() + 3600, time.time() - 60
    runs = {
        "live": run_annotations("dag", "live", future),  # two hours in: it must survive
        "ended": run_annotations("dag", "ended", future),
        "theirs": run_annotations("other", "x", future),  # another deployment's: not ours
        "lost": run_annotations("gone", "y", past),  # unknown and past its deadline
        "days": run_annotations("dag", "days", past),  # running for days, past its deadline: kept
    }
    for name, recorded in runs.items():
        api.add_pod("etl", f"pod-{name}", {**MANAGED_BY, LABEL_RUN: name}, created=old, annotations=recorded)
    api.add_pod("etl", "pod-legacy", {**MANAGED_BY, LABEL_RUN: "r1"}, created=old)  # no run recorded: by age
    api.add_pod("etl", "pod-legacy-new", {**MANAGED_BY, LABEL_RUN: "r2"})
    api.add_pod("etl", "pod-unmanaged", {"app": "x"}, created=old, annotations=runs["ended"])
    states = {"dag/live": "running", "dag/ended": "failed", "dag/days": "running"}

    deleted = sweep(
        api, api, "etl", lambda dag_id, run_id: states.get(f"{dag_id}/{run_id}"),
        now=time.time(), unannotated_older_than=datetime.now(UTC) - timedelta(hours=1), log=LOG,
    )  # fmt: skip

    assert deleted == {"pods": 3, "secrets": 0, "claims": 0, "network_policies": 0}
    left = sorted(name for _, name in api.objects["pods"])
    assert left == ["pod-days", "pod-legacy-new", "pod-live", "pod-theirs", "pod-unmanaged"]
    assert ("pods", "pod-live") not in api.deleted


def test_a_pods_timings_come_from_its_container_states():
    def at(second):
        return datetime(2026, 11, 27, 12, 0, second, tzinfo=UTC)

    def container(name, start, end=None):
        state = SimpleNamespace(running=None, terminated=None)
        if end is None:
            state.running = SimpleNamespace(started_at=at(start))
        else:
            state.terminated = SimpleNamespace(started_at=at(start), finished_at=at(end))
        return SimpleNamespace(name=name, state=state)

    pod = SimpleNamespace(
        status=SimpleNamespace(
            start_time=at(0),
            init_container_statuses=[container("model-loader", 1, 13), container("llm-server", 13, 59)],
            container_statuses=[container("base", 20, 58)],
        )
    )
    assert pod_timing(pod) == {"pod_seconds": 59.0, "model_load_seconds": 12.0, "server_start_seconds": 7.0}
