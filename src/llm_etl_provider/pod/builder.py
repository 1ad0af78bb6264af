"""Build the enrichment pod and its NetworkPolicy from the packaged templates (``pod/templates``).

Pure functions from parameters to Kubernetes manifests (plain dicts in the API's camelCase): no cluster, no
Airflow. The pod's names, paths and labels come from :mod:`llm_etl_provider.contract.layout` (the templates
carry no label), the worker's argv from its :class:`~llm_etl_provider.contract.invocation.WorkerInvocation`.
The operator turns the pod into a ``V1Pod`` and hands it to KubernetesPodOperator; ``llm-etl render-pod``
prints the same manifests.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import (
    LINE_IDS,
    LOG_OUTPUT,
    OBJECT_OUTPUT,
    RECORD_FORMATS,
    REQUESTS_PER_SLOT,
    ApiStyle,
    WorkerInvocation,
    coerce_settings,
    default_of,
)
from llm_etl_provider.contract.layout import (
    DEFAULT_BACKEND,
    DEFAULT_GPUS,
    DEFAULT_MODEL_PATH,
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODEL_SOURCE,
    PULL_POLICIES,
    WORKER_IMAGE_UNSET,
    Backend,
    ModelSource,
)
from llm_etl_provider.contract.pod_commands import (
    check_heartbeat_command,
    load_model_args,
    load_model_command,
)
from llm_etl_provider.contract.provenance import model_digest
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import PodSpecError, WorkerImageUnsetError
from llm_etl_provider.llama_cpp import CPU_PARALLEL, llama_server_args

POD_TEMPLATE = "llm-enrichment-pod.yaml"
MODEL_CACHE_POD_TEMPLATE = "model-cache-pod.yaml"
NETWORK_POLICY_TEMPLATE = "network-policy.yaml"
SERVER_SCRATCH = "2Gi"  # the server's own writes (its /tmp, logs), beside a downloaded model


@dataclass(frozen=True)
class BackendDefaults:
    """A server's image, port, API and health path, and the flags that would make it log prompts or answers
    (refused in ``extra_args``: the server's log is a container log that KPO, the kubelet and log shippers
    read, and it is not sealed)."""

    image: str
    port: int
    api: ApiStyle
    health_path: str
    gpu_parallel: int
    prompt_logging_flags: tuple[str, ...] = ()


BACKENDS: dict[str, BackendDefaults] = {
    "ollama": BackendDefaults("docker.io/ollama/ollama:0.12.6", 11434, "ollama", "/api/version", 8),
    "llamacpp": BackendDefaults(
        "ghcr.io/ggml-org/llama.cpp:server-cuda-b6700", 8080, "openai", "/health", 32,
        ("-v", "--verbose", "--log-verbose", "-lv", "--verbosity", "--log-verbosity", "--verbose-prompt"),
    ),
    "vllm": BackendDefaults(
        "docker.io/vllm/vllm-openai:v0.11.0", 8000, "openai", "/health", 256,
        ("--enable-log-requests", "--enable-log-outputs"),
    ),
}  # fmt: skip
LLAMACPP_CPU_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-b6700"

# The sources downloaded from a network: by the model-cache pod, into the plan's model claim, never by a pod
# that sees a prompt
DOWNLOADED_SOURCES = ("pull", "object")
# Which model sources each server can use: Ollama pulls or reads its own model store; llama.cpp serves a GGUF
# file; vLLM serves a model directory (a PVC or an OCI image volume).
SUPPORTED_SOURCES: dict[str, tuple[str, ...]] = {
    "ollama": ("pull", "pvc"),
    "llamacpp": ("pvc", "object", "image"),
    "vllm": ("pvc", "image"),
}


@dataclass(frozen=True)
class ModelSpec:
    """Which model to serve and where it comes from.

    :param name: the name the server serves it under (Ollama's tag, e.g. ``llama3.2:3b``)
    :param source: ``pull`` (Ollama registry), ``pvc`` (a pre-filled claim), ``object`` (a GGUF file
        downloaded over HTTP(S), e.g. a presigned object-storage URL, checked by sha256) or ``image`` (an OCI
        image mounted as a volume, K8s >= 1.33). ``pull`` and ``object`` are downloaded by the model-cache pod
        (:func:`build_model_cache_pod`) into ``cache_claim``, which the enrichment pods mount read-only
    :param path: the model's path inside the volume (a GGUF file or a model directory)
    :param sha256: the expected sha256 of a GGUF file (required for ``object``)
    :param url_secret: a Secret whose key ``url`` holds the download URL (``object``); a presigned URL is a
        credential, so it never appears in the pod spec
    :param claim: the PersistentVolumeClaim (``pvc``)
    :param image: the OCI image reference (``image``)
    :param size: room for a downloaded model (``pull``, ``object``): the model claim's size
    :param cache_claim: the claim the model-cache pod downloaded the model into (``pull``, ``object``:
        ``layout.model_claim_name`` of the plan)
    """

    name: str
    source: ModelSource = DEFAULT_MODEL_SOURCE
    path: str = DEFAULT_MODEL_PATH
    sha256: str | None = None
    url_secret: str | None = None
    claim: str | None = None
    image: str | None = None
    size: str = DEFAULT_MODEL_SIZE
    cache_claim: str | None = None

    @classmethod
    def of(cls, name: str, options: object, *, cache_claim: str | None = None) -> ModelSpec:
        """The model ``name`` with the ``model_*`` attributes of ``options`` (an operator's arguments, or
        ``llm-etl render-pod``'s): ``model_source`` is :attr:`source`, and so on; one that ``options``
        lacks, or leaves None, takes its default here."""
        given = {
            option: value
            for option in ("source", "path", "sha256", "url_secret", "claim", "image", "size")
            if (value := getattr(options, f"model_{option}", None)) is not None
        }
        return cls(name=name, cache_claim=cache_claim, **given)

    @property
    def downloaded(self) -> bool:
        """Whether the model-cache pod downloads it (``pull``, ``object``)."""
        return self.source in DOWNLOADED_SOURCES


@dataclass(frozen=True)
class ServerSpec:
    """The LLM server sidecar.

    :param backend: ``ollama`` (default), ``llamacpp`` or ``vllm`` (the last two speak the OpenAI API)
    :param image: the server image; default per backend
    :param parallel: requests served at once (vLLM ``--max-num-seqs``, llama.cpp ``--parallel``, Ollama
        ``OLLAMA_NUM_PARALLEL``); None: with a GPU, the backend's ``gpu_parallel`` (:data:`BACKENDS`), else
        :data:`CPU_PARALLEL`.
        The pod's worker keeps ``REQUESTS_PER_SLOT`` (2) times as many requests in flight unless its
        ``concurrency`` is set
    :param gpus: ``nvidia.com/gpu`` limit (0 for CPU)
    :param cpu: CPU limit
    :param memory: memory limit
    :param extra_args: more server arguments
    """

    backend: Backend = DEFAULT_BACKEND
    image: str | None = None
    parallel: int | None = None
    gpus: int = DEFAULT_GPUS
    cpu: str = "4"
    memory: str = "16Gi"
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        logging = [
            arg for arg in self.extra_args if arg.split("=", 1)[0] in self.defaults.prompt_logging_flags
        ]
        if logging:
            raise PodSpecError(
                f"extra_args {' '.join(logging)} would make the {self.backend} server log prompts or answers "
                "into its container log, which is not sealed: drop them"
            )

    @property
    def defaults(self) -> BackendDefaults:
        return BACKENDS[self.backend]

    @property
    def slots(self) -> int:
        """The requests it serves at once."""
        if self.parallel is not None:
            return self.parallel
        return self.defaults.gpu_parallel if self.gpus else CPU_PARALLEL

    @property
    def image_or_default(self) -> str:
        if self.image:
            return self.image
        if self.backend == "llamacpp" and not self.gpus:
            return LLAMACPP_CPU_IMAGE
        return self.defaults.image

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.defaults.port}"


@dataclass(frozen=True)
class PodParams:
    """Everything that varies between enrichment pods.

    :param invocation: the worker's invocation in the pod (:func:`pod_invocation`): task, shard, run, paths
    :param model: the model and its source
    :param server: the LLM server
    :param input_secret: the Secret holding this shard's input (data key ``input.<format>.gz``)
    :param key_secret: the Secret holding the run's frame key (data key ``key``)
    :param worker_image: the worker's image (required: none is published)
    :param node_selector: where GPU pods may run
    :param tolerations: tolerations for GPU node taints
    :param active_deadline_seconds: the pod's hard time limit (the run's TTL)
    :param labels: extra pod labels
    :param work_claim: a PersistentVolumeClaim for the checkpoint and spool, so that a retry resumes
    :param input_bytes: the object transport: the range the worker downloads into its work folder, added to
        that folder's size limit and to the worker's ephemeral storage
    :param worker_memory: the worker container's memory limit (a quantity, e.g. ``4Gi``)
    :param urls_secret: the object transport: the Secret of the shard's URLs, signed when the pod starts and
        renewed while it runs (mounted as a volume, so that the kubelet updates the file in place)
    """

    invocation: WorkerInvocation
    model: ModelSpec
    input_secret: str
    key_secret: str
    server: ServerSpec = field(default_factory=ServerSpec)
    worker_image: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    active_deadline_seconds: int = layout.DEFAULT_POD_TIME_LIMIT_SECONDS
    labels: dict[str, str] = field(default_factory=dict)
    work_claim: str | None = None
    input_bytes: int = 0
    worker_memory: str = layout.DEFAULT_WORKER_MEMORY
    urls_secret: str | None = None


def pod_invocation(
    settings: Mapping[str, Any],
    *,
    run_id: str,
    shard: ShardDescriptor,
    server: ServerSpec,
    model: str,
    attempt: int = default_of("attempt"),
) -> WorkerInvocation:
    """The worker's invocation in the pod: the DAG author's settings, this shard and try, the pod's paths
    and server.

    With the object transport each checkpoint writes a part: the worker checkpoints every
    ``shard.part_records`` records, the interval the stage signed the shard's part URLs for (its
    ``checkpoint_every``, raised to fit a large shard's URLs in its Secret), whatever ``settings`` say.

    Raises :class:`PodSpecError` when a setting does not parse.
    """
    try:
        chosen = coerce_settings(settings)
    except ValueError as exc:
        raise PodSpecError(str(exc)) from None
    by_object = shard.transport == OBJECT_OUTPUT
    if by_object:
        if shard.part_records is None:
            raise PodSpecError(f"shard {shard.index} was staged without its part size: stage it again")
        chosen["checkpoint_every"] = shard.part_records
    if shard.line_ids:  # the stage found no id field in the input: the line names each record
        chosen["id_field"] = LINE_IDS
    return WorkerInvocation(
        **chosen,
        # the object transport: the worker downloads its range into its work folder, and checkpoints in the
        # store (a retried pod elsewhere resumes after the last part)
        input=Path(
            f"{layout.WORK_DIR}/{layout.downloaded_input_name(shard.input_format)}"
            if by_object
            else layout.input_file(shard.input_format)
        ),
        input_format=shard.input_format,
        output=OBJECT_OUTPUT if by_object else LOG_OUTPUT,
        object_transport=Path(layout.OBJECT_TRANSPORT_FILE) if by_object else None,
        key_file=Path(layout.KEY_FILE),
        run_id=run_id,
        shard=shard.index,
        attempt=attempt,
        checkpoint=None if by_object else Path(layout.CHECKPOINT_FILE),
        heartbeat=Path(layout.HEARTBEAT_FILE),
        line_offset=shard.line_offset,
        duplicates=Path(layout.DUPLICATES_FILE) if shard.duplicates else None,
        reused=Path(layout.REUSED_FILE) if shard.reused else None,
        llm_url=server.url,
        api=server.defaults.api,
        model=model,
    )


def load_template(name: str) -> dict[str, Any]:
    """Load one of the templates packaged with the provider (``llm_etl_provider/pod/templates``)."""
    text = resources.files("llm_etl_provider.pod").joinpath("templates", name).read_text()
    data: dict[str, Any] = json.loads(json.dumps(yaml.safe_load(text)))  # YAML anchors share objects: unshare
    return data


def _check_model(model: ModelSpec, server: ServerSpec) -> None:
    if server.backend not in BACKENDS:
        raise PodSpecError(f"unknown backend {server.backend!r}: choose one of {', '.join(BACKENDS)}")
    if model.source not in SUPPORTED_SOURCES[server.backend]:
        raise PodSpecError(
            f"backend {server.backend!r} cannot use model source {model.source!r}; it supports "
            f"{', '.join(SUPPORTED_SOURCES[server.backend])}"
        )
    needs = {"object": ("url_secret", "sha256"), "pvc": ("claim",), "image": ("image",)}.get(model.source, ())
    missing = [name for name in needs if not getattr(model, name)]
    if missing:
        # named as every caller sets them: the operators' arguments, [llm_etl], render-pod's options
        raise PodSpecError(
            f"model source {model.source!r} needs {', '.join(f'model_{name}' for name in missing)}"
        )
    if model.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", model.sha256):
        raise PodSpecError("the model's sha256 must be 64 lowercase hex digits")
    if model.path.startswith("/") or ".." in Path(model.path).parts:
        raise PodSpecError(f"the model path {model.path!r} must be relative to the model volume")
    _sum_quantities(model.size)  # a size that is not a quantity fails here, not in the API server


def _check(params: PodParams) -> None:
    server, model = params.server, params.model
    _check_model(model, server)
    if model.downloaded and not model.cache_claim:
        raise PodSpecError(
            f"model source {model.source!r} is downloaded by the model-cache pod into a claim that the "
            "enrichment pod mounts: give the model's cache_claim (the task group's cache_model step makes it)"
        )
    if server.slots < 1 or server.gpus < 0:
        raise PodSpecError("parallel must be at least 1 and gpus at least 0")
    if params.invocation.input_format not in RECORD_FORMATS:
        raise PodSpecError(f"input format {params.invocation.input_format!r} is not jsonl or csv")
    if params.active_deadline_seconds < 60:
        raise PodSpecError("active_deadline_seconds below 60 s leaves no time to load a model")


def _server_container(params: PodParams, container: dict[str, Any]) -> None:
    server, model = params.server, params.model
    defaults = server.defaults
    container["image"] = server.image_or_default
    model_file = f"{layout.MODELS_DIR}/{model.path}"
    if server.backend == "ollama":
        container["command"] = ["/bin/ollama", "serve"]
        container["env"] += [
            {"name": "OLLAMA_HOST", "value": f"127.0.0.1:{defaults.port}"},
            {"name": "OLLAMA_MODELS", "value": layout.MODELS_DIR},
            {"name": "OLLAMA_NUM_PARALLEL", "value": str(server.slots)},
            {"name": "OLLAMA_KEEP_ALIVE", "value": "-1"},
            {"name": "OLLAMA_NOPRUNE", "value": "1"},  # its model store is read-only
        ]
        probe = ["/bin/ollama", "list"]
    elif server.backend == "llamacpp":
        container["command"] = ["/app/llama-server"]
        container["args"] = [
            *llama_server_args(model_file, model.name, port=defaults.port, slots=server.slots),
            *(["--n-gpu-layers", "999"] if server.gpus else []),
        ]
        probe = ["curl", "-fsS", "-o", "/dev/null", f"{server.url}{defaults.health_path}"]
    else:
        container["command"] = ["vllm", "serve", model_file]
        container["args"] = [
            "--served-model-name", model.name, "--host", "127.0.0.1", "--port", str(defaults.port),
            "--max-num-seqs", str(server.slots), "--download-dir", "/tmp/vllm",  # noqa: S108 - an emptyDir
        ]  # fmt: skip
        probe = ["python3", "-c", f"import urllib.request; urllib.request.urlopen('{server.url}/health')"]
    container["args"] = [*container.get("args", []), *server.extra_args]
    # The server listens on 127.0.0.1 only; the kubelet's HTTP probes target the pod IP, so probe from inside.
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[name]["exec"] = {"command": list(probe)}
    limits: dict[str, Any] = {"cpu": server.cpu, "memory": server.memory, "ephemeral-storage": SERVER_SCRATCH}
    if server.gpus:
        limits["nvidia.com/gpu"] = server.gpus
    container["resources"] = {
        "requests": {
            "cpu": "1",
            "memory": "2Gi",
            "ephemeral-storage": "256Mi",
        },
        "limits": limits,
    }
    _read_only_models(container)


def worker_image_of(given: str | None) -> str:
    """The worker's image, which the deployment must give: no registry publishes one."""
    if not given or not given.strip():
        raise WorkerImageUnsetError(WORKER_IMAGE_UNSET)
    return given


def _loader_container(
    model: ModelSpec,
    server: ServerSpec,
    worker_image: str | None,
    container: dict[str, Any],
    *,
    download: bool,
) -> None:
    """The model loader: with ``download`` (the model-cache pod), fetch the model into the models volume;
    else (the enrichment pod's init container) check, read-only, that the volume holds it."""
    model_file = f"{layout.MODELS_DIR}/{model.path}"
    if server.backend == "ollama":
        container["image"] = server.image or server.defaults.image
        container["env"] += [
            {"name": "OLLAMA_HOST", "value": "127.0.0.1:11435"},
            {"name": "OLLAMA_MODELS", "value": layout.MODELS_DIR},
            {"name": "LLM_ETL_MODEL", "value": model.name},
            *([] if download else [{"name": "OLLAMA_NOPRUNE", "value": "1"}]),
        ]
        action = 'ollama pull "$LLM_ETL_MODEL"' if download else 'ollama show "$LLM_ETL_MODEL" >/dev/null'
        script = (
            "set -eu; /bin/ollama serve >/tmp/ollama-loader.log 2>&1 & server=$!; "
            "for i in $(seq 120); do /bin/ollama list >/dev/null 2>&1 && break; sleep 1; done; "
            f"{action}; kill $server"
        )
        container["command"] = ["/bin/sh", "-c", script]
    else:
        container["image"] = worker_image_of(worker_image)
        container["command"] = load_model_command(model_file)
        if download:
            # The URL (often presigned: a credential) comes as a file from its Secret, never in the env.
            container["args"] = load_model_args(url_file=layout.MODEL_URL_FILE, sha256=model.sha256)
            container["volumeMounts"].append(
                {"name": layout.MODEL_URL_VOLUME, "mountPath": layout.MODEL_URL_DIR, "readOnly": True}
            )
        else:
            container["args"] = load_model_args(sha256=model.sha256)
    if not download:
        _read_only_models(container)


def _read_only_models(container: dict[str, Any]) -> None:
    for mount in container["volumeMounts"]:
        if mount["name"] == layout.MODELS_VOLUME:
            mount["readOnly"] = True


def _models_volume(model: ModelSpec) -> dict[str, Any]:
    """The enrichment pod's model volume: read-only, whatever the source."""
    name = layout.MODELS_VOLUME
    if model.source == "image":
        return {"name": name, "image": {"reference": model.image, "pullPolicy": "IfNotPresent"}}
    claim = model.cache_claim if model.downloaded else model.claim
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}


def quantity_bytes(value: str, name: str) -> int:
    """The bytes of the Kubernetes quantity ``value`` (e.g. ``4Gi``); PodSpecError naming ``name`` when it is
    not one."""
    from kubernetes.utils.quantity import parse_quantity

    try:
        return int(parse_quantity(value))
    except ValueError:
        raise PodSpecError(f"{name} must be a Kubernetes quantity such as 4Gi, not {value!r}") from None


def _sum_quantities(*quantities: str) -> str:
    """Kubernetes quantities added up, in MiB."""
    from kubernetes.utils.quantity import parse_quantity

    try:
        total = sum(parse_quantity(q) for q in quantities)
    except ValueError as exc:
        raise PodSpecError(f"not a storage quantity: {exc}") from None
    return f"{-(-int(total) // (1 << 20))}Mi"


def build_pod(params: PodParams) -> dict[str, Any]:
    """Return the enrichment pod manifest for one shard."""
    _check(params)
    invocation = params.invocation
    pod = copy.deepcopy(load_template(POD_TEMPLATE))
    spec = pod["spec"]
    pod["metadata"]["labels"] = {
        **layout.pod_labels(layout.ENRICHMENT_COMPONENT),
        layout.LABEL_RUN: layout.label_value(invocation.run_id),
        layout.LABEL_SHARD: str(invocation.shard),
        layout.LABEL_MODEL_SOURCE: params.model.source,
        **params.labels,
    }
    pod["metadata"].setdefault("annotations", {})[layout.ANNOTATION_RUN_ID] = invocation.run_id
    spec["activeDeadlineSeconds"] = params.active_deadline_seconds
    if params.node_selector:
        spec["nodeSelector"] = dict(params.node_selector)
    if params.tolerations:
        spec["tolerations"] = [dict(t) for t in params.tolerations]
    loader, server = (
        next(c for c in spec["initContainers"] if c["name"] == name)
        for name in (layout.LOADER_CONTAINER, layout.SERVER_CONTAINER)
    )
    _loader_container(params.model, params.server, params.worker_image, loader, download=False)
    _server_container(params, server)

    worker = spec["containers"][0]
    worker["image"] = worker_image_of(params.worker_image)
    worker["command"] = ["llm-etl-worker"]
    if invocation.concurrency is None:  # the server's parallelism, known here: no need to find it
        invocation = dataclasses.replace(invocation, concurrency=REQUESTS_PER_SLOT * params.server.slots)
    if invocation.model_digest is None:  # the results' provenance: the file's sha256, or the image's digest
        invocation = dataclasses.replace(
            invocation, model_digest=model_digest(params.model.sha256, params.model.image)
        )
    worker["args"] = invocation.to_argv()
    # A batch container has no Service to be ready for; the probes read the worker's heartbeat so that a hung
    # worker is ended by the kubelet (liveness) long before the pod's deadline.
    heartbeat = str(invocation.heartbeat)
    worker["readinessProbe"] = {
        "exec": {"command": check_heartbeat_command(heartbeat, 60)},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
    }
    worker["livenessProbe"] = {
        "exec": {"command": check_heartbeat_command(heartbeat, 300)},
        "initialDelaySeconds": 30,
        "periodSeconds": 30,
        "timeoutSeconds": 10,
        "failureThreshold": 3,
    }
    limit = quantity_bytes(params.worker_memory, "worker_memory")  # refused here, not by the API server
    worker["resources"]["limits"]["memory"] = params.worker_memory
    if limit < quantity_bytes(worker["resources"]["requests"]["memory"], "the worker's memory request"):
        worker["resources"]["requests"]["memory"] = params.worker_memory  # the API refuses a request over it
    if params.input_bytes:  # the object transport's download counts as the worker's storage
        extra = f"{params.input_bytes}"
        resources = worker["resources"]
        for bound in ("requests", "limits"):
            resources[bound]["ephemeral-storage"] = _sum_quantities(
                resources[bound]["ephemeral-storage"], extra
            )
        for volume in spec["volumes"]:
            if volume["name"] == layout.WORK_VOLUME:
                volume["emptyDir"]["sizeLimit"] = _sum_quantities(volume["emptyDir"]["sizeLimit"], extra)
    if params.invocation.output == OBJECT_OUTPUT:
        if not params.urls_secret:
            raise PodSpecError("the object transport's pod needs the Secret of its URLs (urls_secret)")
        # not a subPath: the kubelet replaces the file when the operator renews the URLs
        worker["volumeMounts"].append(
            {"name": layout.URLS_VOLUME, "mountPath": layout.URLS_DIR, "readOnly": True}
        )
        spec["volumes"].append(
            {"name": layout.URLS_VOLUME, "secret": {"secretName": params.urls_secret, "defaultMode": 0o440}}
        )
    if params.work_claim:  # the checkpoint and spool survive the pod: a retry resumes
        for volume in spec["volumes"]:
            if volume["name"] == layout.WORK_VOLUME:
                volume.clear()
                volume.update(name=layout.WORK_VOLUME, persistentVolumeClaim={"claimName": params.work_claim})
    spec["volumes"] += [
        _models_volume(params.model),
        {"name": layout.INPUT_VOLUME, "secret": {"secretName": params.input_secret, "defaultMode": 0o440}},
        {"name": layout.KEY_VOLUME, "secret": {"secretName": params.key_secret, "defaultMode": 0o440}},
    ]
    for container in [*spec["initContainers"], *spec["containers"]]:
        _put_first(container, ("name", "image", "command", "args"))
    return pod


def build_model_cache_pod(
    model: ModelSpec, server: ServerSpec, *, worker_image: str | None = None
) -> dict[str, Any]:
    """Return the pod that downloads a ``pull`` or ``object`` model into ``model.cache_claim`` and ends: the
    only pod of a run that reaches a network for its model, and one that never sees a prompt."""
    _check_model(model, server)
    if not model.downloaded or not model.cache_claim:
        raise PodSpecError(
            f"the model-cache pod downloads a pull or object model into a claim, not {model.source!r}"
            + ("" if model.cache_claim else " without a cache_claim")
        )
    pod = copy.deepcopy(load_template(MODEL_CACHE_POD_TEMPLATE))
    pod["metadata"]["labels"] = {
        **layout.pod_labels(layout.MODEL_CACHE_COMPONENT),
        layout.LABEL_MODEL_SOURCE: model.source,
    }
    container = pod["spec"]["containers"][0]
    _loader_container(model, server, worker_image, container, download=True)
    # the download is written to the claim, not to the container's storage
    pod["spec"]["volumes"].append(
        {"name": layout.MODELS_VOLUME, "persistentVolumeClaim": {"claimName": model.cache_claim}}
    )
    if model.source == "object":
        pod["spec"]["volumes"].append(
            {
                "name": layout.MODEL_URL_VOLUME,
                "secret": {"secretName": model.url_secret, "defaultMode": 0o440},
            }
        )
    _put_first(container, ("name", "image", "command", "args"))
    return pod


def set_pull_policy(manifest: dict[str, Any], policy: str) -> None:
    """Give every container of the pod ``manifest`` the image pull policy ``policy``."""
    if policy not in PULL_POLICIES:
        raise PodSpecError(f"image_pull_policy must be one of {', '.join(PULL_POLICIES)}, not {policy!r}")
    spec = manifest["spec"]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container["imagePullPolicy"] = policy


def _put_first(mapping: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Reorder a manifest mapping so the keys a reader looks for first come first."""
    rest = {k: v for k, v in mapping.items() if k not in keys}
    first = {k: mapping[k] for k in keys if k in mapping}
    mapping.clear()
    mapping.update(first | rest)


ENRICHMENT_COMPONENT, MODEL_CACHE_COMPONENT = layout.ENRICHMENT_COMPONENT, layout.MODEL_CACHE_COMPONENT
DNS_EGRESS = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
MODEL_DOWNLOAD_EGRESS = (DNS_EGRESS, {"ports": [{"protocol": "TCP", "port": 443}]})
# `llm-etl render-pod`'s namespace-wide policies, by component
NAMESPACE_POLICY_NAMES = {
    ENRICHMENT_COMPONENT: "llm-etl-deny-all",
    MODEL_CACHE_COMPONENT: "llm-etl-model-cache",
}


def pod_egress(
    component: str, model_source: str, store_egress: Sequence[tuple[str, int]] = ()
) -> list[dict[str, Any]]:
    """The egress rule of every NetworkPolicy: what a pod of ``component`` may reach, for a model of
    ``model_source``.

    - A pod that sees prompts (``enrichment``) never reaches a network for its model, whatever its source:
      ``pull`` and ``object`` models are in the claim the model-cache pod filled. With the object
      transport it reaches DNS and ``store_egress`` (the store's addresses and port, as the stage resolved
      them) only.
    - The model-cache pod, which only a downloaded source (``pull``, ``object``) has, reaches DNS and HTTPS:
      the registry or store it downloads the model from.
    """
    if component == MODEL_CACHE_COMPONENT:
        if model_source not in DOWNLOADED_SOURCES or store_egress:
            raise PodSpecError(
                "a model-cache pod downloads a pull or object model and reaches nothing else, not a "
                f"{model_source!r} model" + (" or the object transport's store" if store_egress else "")
            )
        return [dict(rule) for rule in MODEL_DOWNLOAD_EGRESS]
    if component != ENRICHMENT_COMPONENT:
        raise PodSpecError(f"no NetworkPolicy for component {component!r}")
    egress: list[dict[str, Any]] = (
        [dict(DNS_EGRESS)] if store_egress else []
    )  # the URLs name the store's host
    for address, port in store_egress:
        cidr = str(ipaddress.ip_network(address, strict=False))  # an address becomes its /32 or /128
        egress.append({"to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": port}]})
    return egress


def network_policy(
    component: str,
    model_source: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    selected: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    store_egress: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """The NetworkPolicy of ``component``'s pods (``enrichment`` or ``model-cache``) for a model of
    ``model_source``: no ingress, and egress by :func:`pod_egress`.

    Given ``selected`` (the labels that tell one run's pods from every other: run key, plan, shard), the
    policy created with those pods, named ``name`` and labelled so that the run's cleanup finds it; else the
    namespace's policy for every such pod (``llm-etl render-pod`` prints it).
    """
    policy = copy.deepcopy(load_template(NETWORK_POLICY_TEMPLATE))
    egress = pod_egress(component, model_source, store_egress)
    metadata = policy["metadata"]
    metadata["name"] = name or NAMESPACE_POLICY_NAMES[component]
    metadata["labels"] = {**layout.APP_NAME, **layout.MANAGED_BY}
    matched = {**layout.APP_NAME, layout.LABEL_COMPONENT: component}
    if selected is not None:
        metadata["labels"].update({**selected, layout.LABEL_KIND: "network-policy"})
        metadata["annotations"] = dict(annotations or {})
        matched.update({**selected, layout.LABEL_COMPONENT: component})
    if namespace:
        metadata["namespace"] = namespace
    policy["spec"]["podSelector"]["matchLabels"] = matched
    policy["spec"]["egress"] = egress
    return policy
