"""The pod KubernetesPodOperator would submit, through ``build_pod_request_obj`` (no cluster needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.providers.cncf.kubernetes.callbacks import ExecutionMode, KubernetesPodOperatorCallback
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from llm_etl_provider.contract.layout import (
    LABEL_RUN,
    key_secret_name,
    label_value,
    run_key,
    run_prefix,
    worker_memory_needed,
)
from llm_etl_provider.exceptions import (
    PodSpecError,
    WorkerExitError,
    WorkerImageUnsetError,
    WorkerRefusedError,
)
from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.transport.frames import FORMAT
from tests.fake_kubernetes import FakeCoreV1
from tests.unit.pod.test_builder import WORKER_IMAGE

SHARD = {
    "index": 2,
    "secret": "llm-etl-run-shard-2",
    "line_offset": 1200,
    "records": 300,
    "input_format": "jsonl",
}


def operator(**kwargs):
    with DAG("llm_enrichment", schedule=None):
        return LLMEnrichmentOperator(
            task_id="enrich",
            shard=kwargs.pop("shard", SHARD),
            model="llama3.2:3b",
            namespace="etl",
            template="{review}",
            **{"worker_image": WORKER_IMAGE, **kwargs},
        )


RUN_ID = "manual__2026-11-24T01:00:00+00:00"


def submitted(op, run_id=RUN_ID, try_number=1):
    ti = SimpleNamespace(dag_id="llm_enrichment", task_id=op.task_id, map_index=2, try_number=try_number)
    pod = op.build_pod_request_obj({"run_id": run_id, "ti": ti, "dag": SimpleNamespace()}, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def test_template_fields_are_pinned():
    assert set(LLMEnrichmentOperator.template_fields) >= {
        "shard", "key_secret", "task", "template", "system_prompt", "schema", "model", "image", "env_vars",
        "backend", "concurrency",
    }  # fmt: skip
    assert set(LocalEnrichmentOperator.template_fields) >= {
        "shard", "task", "template", "system_prompt", "schema", "model", "concurrency", "local_dir",
    }  # fmt: skip


def test_kpo_submits_our_pod_unchanged_where_it_matters():
    pod = submitted(operator())
    spec = pod["spec"]
    assert [c["name"] for c in spec["containers"]] == ["base"]
    assert [c["name"] for c in spec["initContainers"]] == ["model-loader", "llm-server"]
    assert spec["initContainers"][1]["restartPolicy"] == "Always"
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["activeDeadlineSeconds"] == 3 * 24 * 3600  # a large shard on one GPU runs for a day or more
    # the sweeper asks Airflow about the pod's run: without its DAG it would go by age, live or not
    annotations = pod["metadata"]["annotations"]
    assert (annotations["llm-etl.io/dag-id"], annotations["llm-etl.io/run-id"]) == ("llm_enrichment", RUN_ID)
    # what cleanup and extraction select on: this DAG's run, not another DAG's run of the same id
    assert pod["metadata"]["labels"]["llm-etl.io/run-key"] == run_key("llm_enrichment", RUN_ID)
    base = spec["containers"][0]
    assert base["securityContext"]["readOnlyRootFilesystem"] is True
    assert base["image"] == WORKER_IMAGE
    args = base["args"]
    assert args[args.index("--line-offset") + 1] == "1200"
    assert args[args.index("--shard") + 1] == "2"
    assert args[args.index("--run-id") + 1] == "manual__2026-11-24T01:00:00+00:00"
    assert pod["metadata"]["namespace"] == "etl"
    assert pod["metadata"]["name"].startswith("llm-etl-enrich")
    assert pod["metadata"]["labels"][LABEL_RUN] == label_value("manual__2026-11-24T01:00:00+00:00")
    assert pod["metadata"]["labels"]["map_index"] == "2"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["input"]["secret"]["secretName"] == "llm-etl-run-shard-2"
    assert volumes["run-key"]["secret"]["secretName"] == key_secret_name(run_prefix("llm_enrichment", RUN_ID))
    assert len(spec["volumes"]) == len(volumes)  # KPO concatenates volumes: none may be doubled


def test_the_worker_seals_the_try_that_kpo_labels_its_pod_with():
    pod = submitted(operator(), try_number=3)
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--attempt") + 1] == pod["metadata"]["labels"]["try_number"] == "3"


def test_defaults_keep_the_pod_for_extraction_and_allow_for_model_loading():
    op = operator()
    assert op.on_finish_action.value == "delete_active_pod"
    assert op.startup_timeout_seconds >= 600
    assert op.init_container_logs == ["model-loader"]
    assert op.do_xcom_push is False


@pytest.mark.parametrize(
    ("phase", "deleted"), [("Pending", True), ("Running", True), ("Succeeded", False), ("Failed", False)]
)
def test_a_failed_try_deletes_its_pod_only_while_it_still_runs(phase, deleted):
    op = operator()
    removed: list[k8s.V1Pod] = []
    op.__dict__["pod_manager"] = SimpleNamespace(delete_pod=removed.append)
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="llm-etl-enrich-abc"), status=k8s.V1PodStatus(phase=phase))
    assert op.process_pod_deletion(pod) is deleted
    assert removed == ([pod] if deleted else [])


def test_custom_task_arguments_reach_the_worker():
    op = operator(
        task="custom",
        system_prompt="Summarise.",
        schema='{"type": "object"}',
        concurrency=6,
        backend="llamacpp",
        model_source="object",
        model_url_secret="model-url",
        model_sha256="c" * 64,
        gpus=0,
    )
    base = submitted(op)["spec"]["containers"][0]
    args = base["args"]
    assert args[args.index("--system-prompt") + 1] == "Summarise."
    assert args[args.index("--schema") + 1] == '{"type": "object"}'
    assert args[args.index("--concurrency") + 1] == "6"
    assert args[args.index("--api") + 1] == "openai"


def test_a_shard_that_is_not_a_descriptor_is_refused():
    with pytest.raises(TypeError, match="shard descriptor"):
        submitted(operator(shard="shard-2"))


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0", "1.37.0"])
def test_the_submitted_pod_validates_strictly(version):
    import kubernetes_validate

    kubernetes_validate.validate(submitted(operator()), version, strict=True)


def ended_pod(exit_code):
    terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code)
    status = k8s.V1ContainerStatus(
        name="base", state=k8s.V1ContainerState(terminated=terminated), image="", image_id="", ready=False,
        restart_count=0,
    )  # fmt: skip
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="llm-etl-enrich-abc", namespace="etl"),
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]),
    )


@pytest.mark.parametrize(
    ("code", "retried"), [(1, True), (2, False), (3, True), (4, False), (143, True), (137, True)]
)
def test_the_workers_exit_code_decides_whether_the_task_is_retried(code, retried, monkeypatch):
    op = operator()
    monkeypatch.setattr(op, "patch_already_checked", lambda *args, **kwargs: None)
    monkeypatch.setattr(op, "process_pod_deletion", lambda *args, **kwargs: False)
    monkeypatch.setattr(op, "is_istio_enabled", lambda pod: False)
    pod = ended_pod(code)
    with pytest.raises(WorkerExitError, match=f"exited with code {code}") as info:
        op.cleanup(pod, pod)
    assert isinstance(info.value, AirflowFailException) is not retried


def test_a_model_loader_that_failed_decides_when_the_worker_never_ran(monkeypatch):
    op = operator()
    monkeypatch.setattr(op, "patch_already_checked", lambda *args, **kwargs: None)
    monkeypatch.setattr(op, "process_pod_deletion", lambda *args, **kwargs: False)
    monkeypatch.setattr(op, "is_istio_enabled", lambda pod: False)
    pod = ended_pod(2)
    pod.status.init_container_statuses, pod.status.container_statuses = pod.status.container_statuses, []
    pod.status.init_container_statuses[0].name = "model-loader"
    with pytest.raises(WorkerRefusedError, match="model-loader exited with code 2"):
        op.cleanup(pod, pod)
    pod.status.init_container_statuses = []  # no code at all: KPO's own failure stands
    with pytest.raises(AirflowException, match="returned a failure") as info:
        op.cleanup(pod, pod)
    assert not isinstance(info.value, WorkerExitError)


def test_worker_settings_are_keyword_arguments_of_partial_and_reach_the_worker():
    with DAG("llm_enrichment", schedule=None):
        mapped = LLMEnrichmentOperator.partial(
            task_id="enrich", model="m", task="tags", temperature=0.3, max_attempts=2, categories=["a", "b"]
        ).expand(shard=[SHARD])
        with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
            LLMEnrichmentOperator.partial(task_id="typo", model="m", temprature=0.3)
    assert mapped.partial_kwargs["temperature"] == 0.3
    args = submitted(operator(task="tags", temperature=0.3, max_attempts=2, categories=["a", "b"]))["spec"][
        "containers"
    ][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert (flags["--task"], flags["--temperature"], flags["--max-attempts"]) == ("tags", "0.3", "2")
    assert flags["--categories"] == "a,b"


def test_a_setting_that_does_not_parse_fails_before_a_pod_exists():
    with pytest.raises(PodSpecError, match="concurrency 'lots' is not usable"):
        submitted(operator(concurrency="lots"))


FRAME_LINE = f"{FORMAT} run 0 3 R AAAA"


def timestamped(*messages: str, second: int = 0) -> bytes:
    return b"".join(
        f"2026-11-27T10:00:{second + n:02d}.{n:09d}Z {m}\n".encode() for n, m in enumerate(messages)
    )


def test_kpo_reads_no_log_of_the_worker_when_get_logs_is_off(monkeypatch):
    """Pins what the operator relies on: with ``get_logs=False`` KPO neither follows the worker's log (which
    carries the frames) nor hands its lines to callbacks, in the task or in its trigger."""
    op = operator(deferrable=True, logging_interval=30)
    assert op.get_logs is False
    op.__dict__["client"] = FakeCoreV1()
    followed, awaited = [], []
    monkeypatch.setattr(op.pod_manager, "fetch_requested_container_logs", lambda **k: followed.append(k))
    monkeypatch.setattr(op.pod_manager, "await_container_completion", lambda **k: awaited.append(k))
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="pod", namespace="etl"))
    KubernetesPodOperator.await_pod_completion(op, pod)
    assert (followed, [a["container_name"] for a in awaited]) == ([], ["base"])
    op.pod = pod
    with pytest.raises(TaskDeferred) as deferred:
        op.invoke_defer_method()
    assert deferred.value.trigger.get_logs is False
    with pytest.raises(ValueError, match="sealed result frames"):
        operator(get_logs=True)


def pod_of(phase: str) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="pod", namespace="etl"), status=k8s.V1PodStatus(phase=phase)
    )


def recording(monkeypatch, op, log: bytes):
    """The operator on a fake API whose pod ``pod`` has ``log``; what it logs and hands its callbacks."""
    core = FakeCoreV1()
    core.add_pod("etl", "pod", {}, log=log)
    monkeypatch.setattr(LLMEnrichmentOperator, "client", property(lambda self: core))
    logged: list[str] = []
    task_log = SimpleNamespace(
        info=lambda *a: logged.append(a[0] % a[1:]), warning=logged.append, debug=print
    )
    monkeypatch.setattr(LLMEnrichmentOperator, "log", property(lambda self: task_log))
    return logged


def test_the_operator_copies_progress_to_the_task_log_and_callbacks_while_the_worker_runs(monkeypatch):
    received = []

    class Recorder(KubernetesPodOperatorCallback):
        @staticmethod
        def progress_callback(*, line, mode, pod, **kwargs):
            received.append((line, mode, pod.metadata.name))

    op = operator(callbacks=[Recorder])
    logged = recording(monkeypatch, op, timestamped("progress 1/2", FRAME_LINE, "progress 2/2"))
    monkeypatch.setattr(PodManager, "read_pod", lambda self, pod: pod_of("Succeeded"))
    op.await_pod_completion(pod_of("Running"))
    assert received == [
        ("progress 1/2", ExecutionMode.SYNC, "pod"),
        ("progress 2/2", ExecutionMode.SYNC, "pod"),
    ]
    assert logged == ["[base] progress 1/2", "[base] progress 2/2"]


def test_expired_credentials_are_refreshed_and_the_wait_goes_on_without_copying_a_line_twice(monkeypatch):
    """KPO's own wait refreshes its clients after a 401 and goes on: a shard may outlive its token."""
    op = operator()
    logged = recording(monkeypatch, op, timestamped("progress 1/2", "progress 2/2"))
    answers = iter([pod_of("Failed"), ApiException(status=401), pod_of("Succeeded")])
    managers = []

    def read_pod(self, pod):
        managers.append(self)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        # the first answer: the pod ended; its log is read, then KPO's wait is asked again (a resumed task)
        return answer

    monkeypatch.setattr(PodManager, "read_pod", read_pod)
    op.await_pod_completion(pod_of("Running"))
    op.await_pod_completion(pod_of("Running"))  # 401, new clients, then the pod
    assert managers[1] is not managers[2]  # made anew with fresh credentials
    assert logged == ["[base] progress 1/2", "[base] progress 2/2"]


def test_a_deferred_enrichment_copies_the_progress_when_it_resumes(monkeypatch):
    received = []

    class Recorder(KubernetesPodOperatorCallback):
        @staticmethod
        def progress_callback(*, line, mode, pod, **kwargs):
            received.append((line, mode, pod.metadata.name))

    op = operator(deferrable=True, callbacks=[Recorder])
    logged = recording(monkeypatch, op, timestamped(FRAME_LINE, "summary ok=3"))
    monkeypatch.setattr(type(op.hook), "get_pod", lambda self, name, namespace: pod_of("Succeeded"))
    monkeypatch.setattr(KubernetesPodOperator, "trigger_reentry", lambda self, context, event: "resumed")
    assert op.trigger_reentry({}, {"status": "success", "name": "pod", "namespace": "etl"}) == "resumed"
    assert logged == ["[base] summary ok=3"]
    assert received == [("summary ok=3", ExecutionMode.ASYNC, "pod")]


def test_the_workers_memory_limit_is_a_setting():
    """It was a fixed 1 GiB, while 25 million ids alone need more (contract.layout.worker_memory_needed)."""
    assert worker_memory_needed(25_000_000) > 1 << 30
    (worker,) = submitted(operator(worker_memory="6Gi"))["spec"]["containers"]
    assert worker["resources"]["limits"]["memory"] == "6Gi"
    with pytest.raises(PodSpecError, match="worker_memory must be a Kubernetes quantity"):
        submitted(operator(worker_memory="lots"))


def test_a_worker_memory_below_the_default_request_lowers_the_request():
    # the stage takes 64Mi for a small shard; the API server refuses (422) a request over the limit, and the
    # task's retries would all meet the same refusal
    (worker,) = submitted(operator(worker_memory="64Mi"))["spec"]["containers"]
    assert worker["resources"]["limits"]["memory"] == worker["resources"]["requests"]["memory"] == "64Mi"
    (worker,) = submitted(operator(worker_memory="6Gi"))["spec"]["containers"]
    assert worker["resources"]["requests"]["memory"] == "256Mi"


def test_a_pod_the_kubelet_ended_says_why_in_the_task_error():
    """An evicted pod (an emptyDir or the writable layer over its limit) and an OOM-killed worker failed the
    task with KPO's generic error: the kubelet's reason is in it now."""
    from kubernetes.client import models as k8s

    from llm_etl_provider.operators.pod_step import pod_failure

    def terminated(name, code, reason):
        state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code, reason=reason))
        return k8s.V1ContainerStatus(
            name=name, state=state, image="i", image_id="", ready=False, restart_count=0
        )

    evicted = k8s.V1Pod(
        status=k8s.V1PodStatus(
            phase="Failed", reason="Evicted",
            message='Container base exceeded its local ephemeral storage limit "256Mi".',
            container_statuses=[terminated("base", 137, "Error")],
        )
    )  # fmt: skip
    assert (
        pod_failure(evicted)
        == ' (Evicted: Container base exceeded its local ephemeral storage limit "256Mi".)'
    )
    oom = k8s.V1Pod(
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[terminated("base", 137, "OOMKilled")])
    )
    assert pod_failure(oom) == " (base OOMKilled)"
    assert pod_failure(k8s.V1Pod(status=k8s.V1PodStatus(phase="Succeeded"))) == ""


def test_a_try_without_a_worker_image_fails_at_once_saying_how_to_get_one():
    """No registry publishes the worker's image: a deployment that gives none fails before any pod is
    created, without a retry, and is told to build and push it."""
    with pytest.raises(WorkerImageUnsetError, match=r"scripts/build-images\.sh") as refused:
        submitted(operator(worker_image=None))
    assert isinstance(refused.value, AirflowFailException)


def test_the_model_cache_pod_of_an_object_model_needs_the_worker_image_and_ollama_s_does_not():
    from llm_etl_provider.operators.model_cache import ModelCacheOperator

    def cache(**kwargs):
        with DAG("llm_enrichment", schedule=None):
            return ModelCacheOperator(task_id="cache_model", shards=[], model="m", namespace="etl", **kwargs)

    assert cache(backend="ollama", model_source="pull").build_pod_request_obj(None, dry_run=True)
    unset = cache(backend="llamacpp", model_source="object", model_url_secret="u", model_sha256="a" * 64)
    with pytest.raises(WorkerImageUnsetError):
        unset.build_pod_request_obj(None, dry_run=True)
