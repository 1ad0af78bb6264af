from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from llm_etl_provider.contract.invocation import (
    WORKER_SETTINGS,
    WorkerInvocation,
    coerce_settings,
    concurrency,
    default_of,
    name_list,
    parse_argv,
)
from llm_etl_provider.contract.layout import (
    DEFAULT_POD_TIME_LIMIT_SECONDS,
    KEY_FILE,
    LABEL_MODEL_SOURCE,
    LABEL_RUN,
    label_value,
)
from llm_etl_provider.contract.object_transport import MAX_PARTS, TRANSPORTS, part_records_for, parts_needed
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import PodSpecError
from llm_etl_provider.pod.builder import (
    SUPPORTED_SOURCES,
    ModelSpec,
    PodParams,
    ServerSpec,
    build_model_cache_pod,
    build_pod,
    network_policy,
    pod_invocation,
)
from tests.unit.pod.pss import restricted_violations

SHA = "b" * 64
WORKER_IMAGE = "registry.example.com/llm-etl/worker:0.1.0"  # the deployment's: none is published


def model_for(source: str) -> ModelSpec:
    return ModelSpec(
        name="llama3.2:3b",
        source=source,  # type: ignore[arg-type]
        path="llama.gguf",
        sha256=SHA if source in ("object", "image") else None,
        url_secret="model-url" if source == "object" else None,
        claim="models-cache" if source == "pvc" else None,
        image="registry.local/models/llama:3b" if source == "image" else None,
        cache_claim="llm-etl-abc-model" if source in ("pull", "object") else None,
    )


def params(backend="ollama", source="pull", gpus=1, **kwargs) -> PodParams:
    server = ServerSpec(backend=backend, gpus=gpus)
    invocation = pod_invocation(
        {"task": "sentiment", "template": "{review}"},
        run_id="scheduled__2026-11-24T00:00:00+00:00",
        shard=ShardDescriptor(index=3, records=10, line_offset=0, input_format="jsonl"),
        server=server,
        model="llama3.2:3b",
    )
    return PodParams(
        invocation=invocation,
        model=model_for(source),
        server=server,
        input_secret="llm-etl-abc-shard-3",
        key_secret="llm-etl-abc-key",
        **{"worker_image": WORKER_IMAGE, **kwargs},
    )


def bare_invocation() -> WorkerInvocation:
    return WorkerInvocation(
        task="sentiment",
        input=Path("in.jsonl"),
        output="log",
        llm_url="http://127.0.0.1:1",
        model="m",
        run_id="r",
    )


ALL_PODS = [
    (backend, source, gpus)
    for backend, sources in SUPPORTED_SOURCES.items()
    for source, gpus in itertools.product(sources, (0, 1))
]


def containers(pod):
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}


@pytest.mark.parametrize(("backend", "source", "gpus"), ALL_PODS)
def test_every_pod_keeps_the_contract(backend, source, gpus):
    pod = build_pod(params(backend, source, gpus))
    spec = pod["spec"]
    assert spec["containers"][0]["name"] == "base"
    assert [c["name"] for c in spec["initContainers"]] == ["model-loader", "llm-server"]
    loader, server = spec["initContainers"]
    assert "restartPolicy" not in loader
    assert server["restartPolicy"] == "Always"
    assert "exec" in server["startupProbe"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert (
        spec["activeDeadlineSeconds"] == DEFAULT_POD_TIME_LIMIT_SECONDS
    )  # a large shard runs for days; the model load has its own limit
    assert pod["metadata"]["labels"][LABEL_MODEL_SOURCE] == source
    assert ("nvidia.com/gpu" in server["resources"]["limits"]) == bool(gpus)


def every_pod_variant():
    """Every pod the operator can render: each backend, model source and GPU count, and the options."""
    for backend, source, gpus in ALL_PODS:
        yield f"{backend}-{source}-gpu{gpus}", params(backend, source, gpus)
    yield "work-claim", params(work_claim="llm-etl-abc-work-3")
    yield (
        "gpu-node-placement",
        params(
            node_selector={"nvidia.com/gpu.present": "true"},
            tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        ),
    )


VARIANTS = dict(every_pod_variant())


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_meets_the_restricted_pod_security_standard(variant):
    pod = build_pod(VARIANTS[variant])
    minor = 33 if "-image-" in variant else 29  # image volumes: restricted-allowed, and beta, from 1.33
    assert restricted_violations(pod, minor) == []
    for container in containers(pod).values():  # stricter than the standard asks
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        assert "limits" in container["resources"], container["name"]


@pytest.mark.parametrize(
    ("spoil", "violation"),
    [
        (lambda pod: pod["spec"].update(hostNetwork=True), "hostNetwork is set"),
        (
            lambda pod: pod["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            "restricted type",
        ),
        (lambda pod: pod["spec"]["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda pod: pod["spec"]["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (
            lambda pod: pod["spec"]["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 80}]),
            "hostPort",
        ),
        (
            lambda pod: pod["spec"]["initContainers"][1]["securityContext"]["capabilities"].update(
                add=["SYS_ADMIN"]
            ),
            "capabilities added",
        ),
        (
            lambda pod: pod["spec"]["initContainers"][0]["securityContext"].update(
                allowPrivilegeEscalation=True
            ),
            "allowPrivilegeEscalation",
        ),
        (
            lambda pod: pod["spec"]["containers"][0]["securityContext"].update(
                seccompProfile={"type": "Unconfined"}
            ),
            "seccompProfile Unconfined",
        ),
    ],
)
def test_the_pod_security_check_finds_violations(spoil, violation):
    pod = build_pod(params())
    spoil(pod)
    assert any(violation in found for found in restricted_violations(pod)), restricted_violations(pod)


def test_image_volumes_are_restricted_before_kubernetes_1_33():
    pod = build_pod(params("llamacpp", "image"))
    assert restricted_violations(pod, 33) == []
    assert any("restricted type ['image']" in v for v in restricted_violations(pod, 32))


def test_the_worker_reads_its_shard_and_key_from_secrets_and_writes_sealed_frames():
    pod = build_pod(params())
    worker = pod["spec"]["containers"][0]
    args = worker["args"]
    assert args[:4] == ["--task", "sentiment", "--template", "{review}"]
    flags = dict(zip(args[4::2], args[5::2], strict=False))
    assert flags["--output"] == "log"
    assert flags["--key-file"] == KEY_FILE
    assert flags["--run-id"] == "scheduled__2026-11-24T00:00:00+00:00"
    assert flags["--shard"] == "3"
    assert flags["--llm-url"] == "http://127.0.0.1:11434"
    assert flags["--api"] == "ollama"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["input"]["secret"]["secretName"] == "llm-etl-abc-shard-3"
    assert volumes["run-key"]["secret"]["secretName"] == "llm-etl-abc-key"


def test_no_secret_value_is_in_the_pod_spec():
    pod = build_model_cache_pod(
        model_for("object"), ServerSpec(backend="llamacpp"), worker_image=WORKER_IMAGE
    )
    (loader,) = pod["spec"]["containers"]
    assert all("valueFrom" not in e for e in loader.get("env", []))
    mounts = {m["name"]: m for m in loader["volumeMounts"]}
    assert mounts["model-url"]["readOnly"] is True
    assert loader["args"][:2] == ["--url-file", f"{mounts['model-url']['mountPath']}/url"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model-url"]["secret"] == {"secretName": "model-url", "defaultMode": 0o440}
    enrichment = build_pod(params("llamacpp", "object"))
    assert all("valueFrom" not in e for c in containers(enrichment).values() for e in c.get("env", []))


def test_the_worker_is_probed_through_its_heartbeat():
    worker = build_pod(params())["spec"]["containers"][0]
    args = worker["args"]
    heartbeat = args[args.index("--heartbeat") + 1]
    for probe in ("readinessProbe", "livenessProbe"):
        command = worker[probe]["exec"]["command"]
        assert command[:3] == ["llm-etl", "check-heartbeat", heartbeat]


def test_servers_listen_on_localhost_only():
    for backend in SUPPORTED_SOURCES:
        source = SUPPORTED_SOURCES[backend][0]
        server = containers(build_pod(params(backend, source)))["llm-server"]
        listen = " ".join(server.get("args", [])) + " ".join(e.get("value", "") for e in server["env"])
        assert "127.0.0.1" in listen
        assert "0.0.0.0" not in listen


@pytest.mark.parametrize(
    ("backend", "source", "message"),
    [
        ("ollama", "object", "cannot use model source 'object'"),
        ("vllm", "pull", "cannot use model source 'pull'"),
        ("gpt", "pull", "unknown backend"),
    ],
)
def test_unsupported_combinations_are_refused(backend, source, message):
    model = ModelSpec(name="m", source=source)
    with pytest.raises(PodSpecError, match=message):
        build_pod(
            PodParams(
                invocation=bare_invocation(),
                model=model,
                server=ServerSpec(backend=backend),
                input_secret="i",
                key_secret="k",
            )
        )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ModelSpec(name="m", source="object", sha256=SHA), "needs model_url_secret"),
        (ModelSpec(name="m", source="object", url_secret="u", sha256="ABC"), "64 lowercase hex"),
        (ModelSpec(name="m", source="pvc"), "needs model_claim"),
        (ModelSpec(name="m", source="pvc", claim="c", path="../etc/passwd"), "relative to the model volume"),
    ],
)
def test_incomplete_model_sources_are_refused(model, message):
    with pytest.raises(PodSpecError, match=message):
        build_pod(
            PodParams(
                invocation=bare_invocation(),
                model=model,
                server=ServerSpec(backend="llamacpp"),
                input_secret="i",
                key_secret="k",
            )
        )


def test_run_ids_become_valid_unique_label_values():
    value = label_value("scheduled__2026-11-24T00:00:00+00:00")
    assert len(value) <= 63
    assert value != label_value("scheduled__2026-11-24T00:00:00+00:01")
    assert label_value("simple-run") == "simple-run"
    assert build_pod(params())["metadata"]["labels"][LABEL_RUN] == value


def test_gpu_scheduling_is_a_parameter():
    pod = build_pod(
        params(
            node_selector={"nvidia.com/gpu.present": "true"},
            tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        )
    )
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def ports(policy: dict) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_network_policies_deny_everything_but_model_cache_downloads():
    deny = network_policy("enrichment", "pull", namespace="etl")
    assert deny["metadata"]["namespace"] == "etl"
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert deny["spec"]["ingress"] == []
    assert deny["spec"]["egress"] == []
    assert deny["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "enrichment"
    cache = network_policy("model-cache", "pull", namespace="etl")
    assert cache["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "model-cache"
    assert ports(cache) == {53, 443}
    assert deny["metadata"]["name"] != cache["metadata"]["name"]


@pytest.mark.parametrize("source", ["pull", "pvc", "object", "image"])
@pytest.mark.parametrize("run", [False, True], ids=["namespace", "run"])
def test_one_rule_decides_which_pods_reach_a_network_for_their_model(source, run):
    """Issue 25: two NetworkPolicy builders, the namespace's (``llm-etl render-pod``) and a run's, each wrote
    which model sources get egress, and they had disagreed (the namespace's opened DNS and HTTPS to ``pull``
    pods, the shard's to ``pull`` and ``object`` pods, the enrichment pod included). One builder and one rule
    now: a pod that sees the prompts (enrichment) never gets egress for its model, whatever its source; the
    model-cache pod gets DNS and HTTPS, and only a ``pull`` or ``object`` model has one."""
    selected = {"llm-etl.io/run-key": "0123456789ab", "llm-etl.io/plan": "p" * 16} if run else None
    assert network_policy("enrichment", source, name="e", selected=selected)["spec"]["egress"] == []
    if source in ("pull", "object"):
        assert ports(network_policy("model-cache", source, name="c", selected=selected)) == {53, 443}
    else:
        with pytest.raises(PodSpecError, match="pull or object"):
            network_policy("model-cache", source, name="c", selected=selected)
    with pytest.raises(PodSpecError, match="object transport's store"):  # the store is the enrichment's
        network_policy("model-cache", "object", store_egress=[("10.1.2.3", 9000)])


def test_each_shard_gets_a_network_policy_selecting_its_own_pod():
    labels = {"llm-etl.io/run-key": "0123456789ab", "llm-etl.io/shard": "3"}
    policy = network_policy("enrichment", "pull", name="p", selected=labels, annotations={"a": "b"})
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "llm-etl",
        "app.kubernetes.io/component": "enrichment",
        **labels,
    }
    assert (policy["spec"]["ingress"], policy["spec"]["egress"]) == ([], [])
    assert policy["metadata"]["name"] == "p"
    assert policy["metadata"]["annotations"] == {"a": "b"}
    assert policy["metadata"]["labels"]["llm-etl.io/run-key"] == "0123456789ab"  # cleanup finds it by run
    assert policy["metadata"]["labels"]["llm-etl.io/kind"] == "network-policy"


@pytest.mark.parametrize(("backend", "source"), [("ollama", "pull"), ("llamacpp", "object")])
def test_no_pod_that_sees_a_prompt_downloads_its_model(backend, source):
    """Issue 23 (8): `pull` and `object` gave the whole enrichment pod DNS and HTTPS to any address, the
    server that sees every prompt included. The model-cache pod downloads now; the enrichment pod mounts its
    claim read-only, and its policy allows no egress."""
    pod = build_pod(params(backend, source))
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["models"] == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "llm-etl-abc-model", "readOnly": True},
    }
    for container in containers(pod).values():
        for mount in container["volumeMounts"]:
            assert mount["name"] != "model-url"
            if mount["name"] == "models":
                assert mount["readOnly"] is True, container["name"]
    loader = containers(pod)["model-loader"]
    assert "pull" not in " ".join(loader["command"])
    assert "--url-file" not in loader.get("args", [])
    labels = {"llm-etl.io/run-key": "0123456789ab", "llm-etl.io/plan": "p" * 16}
    shard = network_policy("enrichment", source, name="p", selected={**labels, "llm-etl.io/shard": "3"})
    assert shard["spec"]["egress"] == []
    model = model_for(source)
    cache = build_model_cache_pod(model, ServerSpec(backend=backend), worker_image=WORKER_IMAGE)
    (downloader,) = cache["spec"]["containers"]
    assert cache["metadata"]["labels"]["app.kubernetes.io/component"] == "model-cache"
    assert "initContainers" not in cache["spec"]  # no server, no worker: nothing that sees a prompt
    assert {v["name"]: v for v in cache["spec"]["volumes"]}["models"] == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "llm-etl-abc-model"},
    }
    if source == "pull":
        assert 'ollama pull "$LLM_ETL_MODEL"' in downloader["command"][-1]
    else:
        assert (
            downloader["args"][downloader["args"].index("--url-file") + 1] == "/var/run/llm-etl/model-url/url"
        )
    assert restricted_violations(cache, 29) == []
    policy = network_policy("model-cache", source, name="c", selected=labels)
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "llm-etl",
        "app.kubernetes.io/component": "model-cache",
        "llm-etl.io/run-key": "0123456789ab",
        "llm-etl.io/plan": "p" * 16,
    }
    assert ports(policy) == {53, 443}


def test_the_model_cache_pod_is_only_for_downloaded_sources():
    with pytest.raises(PodSpecError, match="pull or object"):
        build_model_cache_pod(model_for("pvc"), ServerSpec(backend="ollama"))
    with pytest.raises(PodSpecError, match="cache_claim"):
        build_pod(dataclasses.replace(params("ollama", "pull"), model=ModelSpec("m", source="pull")))


def test_a_work_claim_replaces_the_work_emptydir():
    import dataclasses

    pod = build_pod(dataclasses.replace(params(), work_claim="llm-etl-abc-shard-3-work-1234"))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["work"] == {
        "name": "work",
        "persistentVolumeClaim": {"claimName": "llm-etl-abc-shard-3-work-1234"},
    }
    assert "emptyDir" in {v["name"]: v for v in build_pod(params())["spec"]["volumes"]}["work"]


@pytest.mark.parametrize(
    ("backend", "extra_args", "refused"),
    [
        ("llamacpp", ("--verbose",), "--verbose"),
        ("llamacpp", ("--ctx-size", "4096", "-lv", "4"), "-lv"),
        ("llamacpp", ("--log-verbosity=5",), "--log-verbosity=5"),
        (
            "vllm",
            ("--enable-log-requests", "--enable-log-outputs"),
            "--enable-log-requests --enable-log-outputs",
        ),
    ],
)
def test_server_flags_that_log_prompts_are_refused(backend, extra_args, refused):
    """The sidecar's log is an unsealed container log: a flag that prints prompts would put records there."""
    with pytest.raises(
        PodSpecError, match=f"extra_args {refused} would make the {backend} server log prompts"
    ):
        ServerSpec(backend=backend, extra_args=extra_args)


def test_other_server_flags_pass():
    assert ServerSpec(backend="llamacpp", extra_args=("--ctx-size", "4096")).extra_args == (
        "--ctx-size",
        "4096",
    )


def server_args(pod) -> list[str]:
    server = next(c for c in pod["spec"]["initContainers"] if c["name"] == "llm-server")
    return [*server.get("args", []), *(f"{e['name']}={e['value']}" for e in server.get("env", []))]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize(
    ("backend", "source", "gpus", "slots", "setting"),
    [
        ("vllm", "pvc", 1, 256, "--max-num-seqs"),
        ("llamacpp", "pvc", 1, 32, "--parallel"),
        ("llamacpp", "pvc", 0, 4, "--parallel"),
        ("ollama", "pull", 1, 8, "OLLAMA_NUM_PARALLEL"),
        ("ollama", "pull", 0, 4, "OLLAMA_NUM_PARALLEL"),
    ],
)
def test_the_server_and_the_worker_are_sized_from_one_setting(backend, source, gpus, slots, setting):
    """One setting, ``parallel``, with GPU-sized defaults: the server serves that many requests at once and
    the worker keeps twice as many in flight (vLLM started with --max-num-seqs 4 and the worker at 4)."""
    pod = build_pod(params(backend, source, gpus))
    args = server_args(pod)
    served = (
        flag(args, setting) if setting.startswith("--") else next(a for a in args if a.startswith(setting))
    )
    assert served in (str(slots), f"{setting}={slots}")
    worker = pod["spec"]["containers"][0]["args"]
    assert flag(worker, "--concurrency") == str(2 * slots)
    if backend == "llamacpp":
        assert flag(args, "--ctx-size") == str(slots * 2048)  # every slot gets a whole context
        cuda = (
            "server-cuda-"
            in next(c for c in pod["spec"]["initContainers"] if c["name"] == "llm-server")["image"]
        )
        assert cuda == bool(gpus)  # the CPU build ignored --n-gpu-layers


def test_a_chosen_parallelism_and_concurrency_are_kept():
    server = ServerSpec(backend="vllm", parallel=64)
    chosen = params("vllm", "pvc")
    invocation = dataclasses.replace(chosen.invocation, concurrency=100)
    pod = build_pod(dataclasses.replace(chosen, server=server, invocation=invocation))
    assert flag(server_args(pod), "--max-num-seqs") == "64"
    assert flag(pod["spec"]["containers"][0]["args"], "--concurrency") == "100"


def test_a_model_size_that_is_not_a_quantity_is_refused():
    chosen = params("ollama", "pull")
    with pytest.raises(PodSpecError, match="not a storage quantity"):
        build_pod(dataclasses.replace(chosen, model=dataclasses.replace(chosen.model, size="lots")))


def test_an_object_transport_pod_downloads_its_range_into_a_work_folder_that_holds_it():
    server = ServerSpec(backend="llamacpp", gpus=1)
    shard = ShardDescriptor(
        index=3,
        records=10,
        line_offset=0,
        input_format="csv",
        bytes=3 << 30,
        transport="object",
        part_records=10,
    )
    invocation = pod_invocation({"task": "sentiment"}, run_id="r", shard=shard, server=server, model="m")
    plain = build_pod(params(backend="llamacpp", source="pvc"))
    pod = build_pod(
        PodParams(
            invocation=invocation, model=model_for("pvc"), server=server, input_secret="s", key_secret="k",
            input_bytes=3 << 30, urls_secret="s-urls", worker_image=WORKER_IMAGE,
        )
    )  # fmt: skip
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--output") + 1] == "object"
    # the URLs come from a Secret of their own, mounted whole (no subPath): renewed in place while it runs
    assert args[args.index("--object-transport") + 1] == "/var/run/llm-etl/urls/object.json"
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["urls"] == {"name": "urls", "mountPath": "/var/run/llm-etl/urls", "readOnly": True}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["urls"]["secret"] == {"secretName": "s-urls", "defaultMode": 0o440}
    with pytest.raises(PodSpecError, match="urls_secret"):
        build_pod(
            PodParams(
                invocation=invocation,
                model=model_for("pvc"),
                server=server,
                input_secret="s",
                key_secret="k",
                worker_image=WORKER_IMAGE,
            )
        )
    assert args[args.index("--input") + 1] == "/work/input.csv"
    assert "--checkpoint" not in args  # in the store, beside the parts
    work = {v["name"]: v for v in pod["spec"]["volumes"]}["work"]["emptyDir"]["sizeLimit"]
    plain_work = {v["name"]: v for v in plain["spec"]["volumes"]}["work"]["emptyDir"]["sizeLimit"]
    assert (work, plain_work) == ("5120Mi", "2Gi")
    storage = pod["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"]
    assert storage == "3328Mi"  # 256Mi + the range


def test_the_object_transport_s_policy_allows_dns_and_the_store_only():
    labels = {"llm-etl.io/run-key": "0123456789ab", "llm-etl.io/shard": "0"}
    policy = network_policy(
        "enrichment", "pvc", name="p", selected=labels, store_egress=[("10.1.2.3", 9000), ("::1", 443)]
    )
    assert policy["spec"]["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"protocol": "TCP", "port": 9000}]},
        {"to": [{"ipBlock": {"cidr": "::1/128"}}], "ports": [{"protocol": "TCP", "port": 443}]},
    ]


@pytest.mark.parametrize(("records", "every"), [(10, 100), (10_000, 5), (1_000_000, 100), (7, 1)])
def test_a_shard_checkpoints_as_often_as_the_stage_planned_its_parts(records, every):
    """One road for ``checkpoint_every``: with the object transport each checkpoint writes a part, so the
    worker's flag is the interval the stage signed the shard's part URLs for, as its descriptor carries it,
    whatever the enrichment's own setting says; with the log transport it is the setting itself."""
    server = ServerSpec(backend="llamacpp")
    planned = part_records_for(records, every)  # what the stage signs the shard's URLs for
    assert parts_needed(records, planned) <= MAX_PARTS
    by_transport = {}
    for transport in TRANSPORTS:
        shard = ShardDescriptor(
            index=0, records=records, line_offset=0, input_format="jsonl", transport=transport,
            part_records=planned if transport == "object" else None,
        )  # fmt: skip
        # the enrichment's setting differs from the stage's: the stage's plan is what the URLs fit
        settings = {"task": "sentiment", "checkpoint_every": every + 3}
        invocation = pod_invocation(settings, run_id="r", shard=shard, server=server, model="m")
        argv = invocation.to_argv()
        by_transport[transport] = int(argv[argv.index("--checkpoint-every") + 1])
    assert by_transport == {"log": every + 3, "object": planned}


def test_an_object_shard_staged_without_its_part_size_is_refused():
    shard = ShardDescriptor(index=0, records=5, line_offset=0, input_format="jsonl", transport="object")
    with pytest.raises(PodSpecError, match="staged without its part size"):
        pod_invocation({}, run_id="r", shard=shard, server=ServerSpec(backend="llamacpp"), model="m")


def test_every_worker_setting_reaches_the_workers_argv_with_no_code_of_its_own():
    """The Airflow half of the settings path: a DAG author's setting goes through :func:`pod_invocation` to
    the worker's argv by its declaration alone (a sample value per parse function, none per setting)."""
    samples = {
        int: "7",
        float: "0.25",
        concurrency: "3",
        name_list: "a,b",
        str: "{x}",
    }
    declared = {item.name: item.metadata["flag"] for item in dataclasses.fields(WorkerInvocation)}
    settings = {
        name: flag.choices[-1] if flag.choices else samples[flag.parse]
        for name, flag in declared.items()
        if name in WORKER_SETTINGS
    }
    expected = coerce_settings(settings)
    assert all(value != default_of(name) for name, value in expected.items())
    shard = ShardDescriptor(index=0, records=10, line_offset=0, input_format="jsonl")
    invocation = pod_invocation(settings, run_id="r", shard=shard, server=ServerSpec(), model="m")
    parsed = parse_argv(invocation.to_argv())
    assert {name: getattr(parsed, name) for name in WORKER_SETTINGS} == expected


def test_every_backend_the_configuration_offers_has_its_server_defaults():
    from llm_etl_provider.contract.layout import BACKEND_NAMES, DEFAULT_BACKEND
    from llm_etl_provider.pod.builder import BACKENDS

    assert tuple(BACKENDS) == BACKEND_NAMES
    assert DEFAULT_BACKEND in BACKENDS


@pytest.mark.parametrize(
    ("backend", "model", "digest"),
    [
        ("llamacpp", model_for("object"), f"sha256:{SHA}"),  # the file the loader checked
        (
            "llamacpp",
            dataclasses.replace(model_for("image"), sha256=None, image=f"r.local/m@sha256:{SHA}"),
            f"sha256:{SHA}",
        ),
        ("ollama", model_for("pull"), None),  # a registry tag: no digest the pod can vouch for
    ],
)
def test_the_worker_is_told_the_model_s_digest_for_its_results_provenance(backend, model, digest):
    pod = build_pod(dataclasses.replace(params(backend=backend, source=model.source), model=model))
    args = pod["spec"]["containers"][0]["args"]
    assert ("--model-digest" in args) is (digest is not None)
    if digest:
        assert args[args.index("--model-digest") + 1] == digest
