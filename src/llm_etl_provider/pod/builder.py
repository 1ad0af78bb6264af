"""Build the enrichment pod and its NetworkPolicy from the templates in ``pod_templates/`` and parameters.

Pure functions from parameters to Kubernetes manifests (plain dicts in the API's camelCase): no cluster, no
Airflow. The operator turns the pod into a ``V1Pod`` and hands it to KubernetesPodOperator;
``llm-etl render-pod`` prints the same manifests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from llm_etl_provider.exceptions import PodSpecError

Backend = Literal["ollama", "llamacpp", "vllm"]
ModelSource = Literal["pull", "pvc", "object", "image"]

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "pod_templates"
POD_TEMPLATE = "llm-enrichment-pod.yaml"
NETWORK_POLICY_TEMPLATE = "network-policy.yaml"
DEFAULT_WORKER_IMAGE = "ghcr.io/llm-etl-provider/worker:0.1.0"
INPUT_DIR = "/var/run/llm-etl/input"
KEY_FILE = "/var/run/llm-etl/key/key"
MODEL_URL_DIR = "/var/run/llm-etl/model-url"
HEARTBEAT_FILE = "/work/heartbeat"
LABEL_RUN = "llm-etl.io/run"
LABEL_SHARD = "llm-etl.io/shard"
LABEL_MODEL_SOURCE = "llm-etl.io/model-source"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class BackendDefaults:
    image: str
    port: int
    api: str
    health_path: str


BACKENDS: dict[str, BackendDefaults] = {
    "ollama": BackendDefaults("docker.io/ollama/ollama:0.12.6", 11434, "ollama", "/api/version"),
    "llamacpp": BackendDefaults("ghcr.io/ggml-org/llama.cpp:server-b6700", 8080, "openai", "/health"),
    "vllm": BackendDefaults("docker.io/vllm/vllm-openai:v0.11.0", 8000, "openai", "/health"),
}

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
    :param source: ``pull`` (Ollama registry; needs egress), ``pvc`` (a pre-filled claim), ``object`` (a GGUF
        file downloaded over HTTP(S), e.g. a presigned object-storage URL, checked by sha256) or ``image`` (an
        OCI image mounted as a volume, K8s >= 1.33)
    :param path: the model's path inside the volume (a GGUF file or a model directory)
    :param sha256: the expected sha256 of a GGUF file (required for ``object``)
    :param url_secret: a Secret whose key ``url`` holds the download URL (``object``); a presigned URL is a
        credential, so it never appears in the pod spec
    :param claim: the PersistentVolumeClaim (``pvc``)
    :param image: the OCI image reference (``image``)
    """

    name: str
    source: ModelSource = "pull"
    path: str = "model.gguf"
    sha256: str | None = None
    url_secret: str | None = None
    claim: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class ServerSpec:
    """The LLM server sidecar.

    :param backend: ``ollama`` (default), ``llamacpp`` or ``vllm`` (the last two speak the OpenAI API)
    :param image: the server image; default per backend
    :param parallel: requests served at once
    :param gpus: ``nvidia.com/gpu`` limit (0 for CPU)
    :param cpu: CPU limit
    :param memory: memory limit
    :param extra_args: more server arguments
    """

    backend: Backend = "ollama"
    image: str | None = None
    parallel: int = 4
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    extra_args: tuple[str, ...] = ()

    @property
    def defaults(self) -> BackendDefaults:
        return BACKENDS[self.backend]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.defaults.port}"


@dataclass(frozen=True)
class PodParams:
    """Everything that varies between enrichment pods.

    :param worker_args: the task's ``llm-etl-worker`` arguments (task, template, schema ...)
    :param model: the model and its source
    :param server: the LLM server
    :param input_secret: the Secret holding this shard's input (key ``input.jsonl.gz``)
    :param key_secret: the Secret holding the run's frame key (key ``key``)
    :param run_id: the run (bound into every frame)
    :param shard: the shard number
    :param input_format: the shard's format (``jsonl`` or ``csv``; the Secret's key is ``input.<format>.gz``)
    :param worker_image: the worker's image
    :param node_selector: where GPU pods may run
    :param tolerations: tolerations for GPU node taints
    :param active_deadline_seconds: the pod's hard time limit (the run's TTL)
    :param labels: extra pod labels
    """

    worker_args: tuple[str, ...]
    model: ModelSpec
    input_secret: str
    key_secret: str
    run_id: str
    shard: int = 0
    input_format: str = "jsonl"
    server: ServerSpec = field(default_factory=ServerSpec)
    worker_image: str = DEFAULT_WORKER_IMAGE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    active_deadline_seconds: int = 3600
    labels: dict[str, str] = field(default_factory=dict)
    work_claim: str | None = None


def load_template(name: str) -> dict[str, Any]:
    """Load a template from ``pod_templates/`` (the repository's, or the copy packaged with the provider)."""
    path = TEMPLATE_DIR / name
    if path.is_file():
        text = path.read_text()
    else:
        text = resources.files("llm_etl_provider.pod").joinpath("templates", name).read_text()
    data: dict[str, Any] = json.loads(json.dumps(yaml.safe_load(text)))  # YAML anchors share objects: unshare
    return data


def label_value(value: str) -> str:
    """Make a string a valid label value (63 characters, alphanumeric ends) without losing uniqueness."""
    if _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value).strip("-_.")[:50].strip("-_.")
    return f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:10]}".strip("-")


def _check(params: PodParams) -> None:
    server, model = params.server, params.model
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
        raise PodSpecError(f"model source {model.source!r} needs {', '.join(missing)}")
    if model.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", model.sha256):
        raise PodSpecError("the model's sha256 must be 64 lowercase hex digits")
    if model.path.startswith("/") or ".." in Path(model.path).parts:
        raise PodSpecError(f"the model path {model.path!r} must be relative to the model volume")
    if server.parallel < 1 or server.gpus < 0:
        raise PodSpecError("parallel must be at least 1 and gpus at least 0")
    if params.input_format not in ("jsonl", "csv"):
        raise PodSpecError(f"input format {params.input_format!r} is not jsonl or csv")
    if params.active_deadline_seconds < 60:
        raise PodSpecError("active_deadline_seconds below 60 s leaves no time to load a model")


def _server_container(params: PodParams, container: dict[str, Any]) -> None:
    server, model = params.server, params.model
    defaults = server.defaults
    container["image"] = server.image or defaults.image
    model_file = f"/models/{model.path}"
    if server.backend == "ollama":
        container["command"] = ["/bin/ollama", "serve"]
        container["env"] += [
            {"name": "OLLAMA_HOST", "value": f"127.0.0.1:{defaults.port}"},
            {"name": "OLLAMA_MODELS", "value": "/models"},
            {"name": "OLLAMA_NUM_PARALLEL", "value": str(server.parallel)},
            {"name": "OLLAMA_KEEP_ALIVE", "value": "-1"},
        ]
        probe = ["/bin/ollama", "list"]
    elif server.backend == "llamacpp":
        container["command"] = ["/app/llama-server"]
        container["args"] = [
            "--model", model_file, "--alias", model.name, "--host", "127.0.0.1", "--port", str(defaults.port),
            "--parallel", str(server.parallel), "--no-webui",
            *(["--n-gpu-layers", "999"] if server.gpus else []),
        ]  # fmt: skip
        probe = ["curl", "-fsS", "-o", "/dev/null", f"{server.url}{defaults.health_path}"]
    else:
        container["command"] = ["vllm", "serve", model_file]
        container["args"] = [
            "--served-model-name", model.name, "--host", "127.0.0.1", "--port", str(defaults.port),
            "--max-num-seqs", str(server.parallel), "--download-dir", "/tmp/vllm",  # noqa: S108 - an emptyDir
        ]  # fmt: skip
        probe = ["python3", "-c", f"import urllib.request; urllib.request.urlopen('{server.url}/health')"]
    container["args"] = [*container.get("args", []), *server.extra_args]
    # The server listens on 127.0.0.1 only; the kubelet's HTTP probes target the pod IP, so probe from inside.
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[name]["exec"] = {"command": list(probe)}
    limits: dict[str, Any] = {"cpu": server.cpu, "memory": server.memory, "ephemeral-storage": "2Gi"}
    if server.gpus:
        limits["nvidia.com/gpu"] = server.gpus
    container["resources"] = {
        "requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "256Mi"},
        "limits": limits,
    }
    if model.source in ("pvc", "image"):
        _read_only_models(container)


def _loader_container(params: PodParams, container: dict[str, Any]) -> None:
    server, model = params.server, params.model
    model_file = f"/models/{model.path}"
    if server.backend == "ollama":
        container["image"] = server.image or server.defaults.image
        container["env"] += [
            {"name": "OLLAMA_HOST", "value": "127.0.0.1:11435"},
            {"name": "OLLAMA_MODELS", "value": "/models"},
            {"name": "LLM_ETL_MODEL", "value": model.name},
        ]
        action = (
            'ollama pull "$LLM_ETL_MODEL"'
            if model.source == "pull"
            else 'ollama show "$LLM_ETL_MODEL" >/dev/null'
        )
        script = (
            "set -eu; /bin/ollama serve >/tmp/ollama-loader.log 2>&1 & server=$!; "
            "for i in $(seq 120); do /bin/ollama list >/dev/null 2>&1 && break; sleep 1; done; "
            f"{action}; kill $server"
        )
        container["command"] = ["/bin/sh", "-c", script]
        if model.source == "pvc":
            _read_only_models(container)
        return
    container["image"] = params.worker_image
    container["command"] = ["llm-etl", "load-model", "--dest", model_file]
    if model.source == "object":
        # The URL (often presigned: a credential) comes as a file from its Secret, never in the environment.
        container["args"] = ["--url-file", f"{MODEL_URL_DIR}/url", "--sha256", str(model.sha256)]
        container["volumeMounts"].append({"name": "model-url", "mountPath": MODEL_URL_DIR, "readOnly": True})
    else:
        container["args"] = ["--verify", *(["--sha256", model.sha256] if model.sha256 else [])]
        _read_only_models(container)


def _read_only_models(container: dict[str, Any]) -> None:
    for mount in container["volumeMounts"]:
        if mount["name"] == "models":
            mount["readOnly"] = True


def _models_volume(model: ModelSpec) -> dict[str, Any]:
    if model.source == "pvc":
        return {"name": "models", "persistentVolumeClaim": {"claimName": model.claim, "readOnly": True}}
    if model.source == "image":
        return {"name": "models", "image": {"reference": model.image, "pullPolicy": "IfNotPresent"}}
    return {"name": "models", "emptyDir": {"sizeLimit": "64Gi"}}


def build_pod(params: PodParams) -> dict[str, Any]:
    """Return the enrichment pod manifest for one shard."""
    _check(params)
    pod = copy.deepcopy(load_template(POD_TEMPLATE))
    spec = pod["spec"]
    run_label = label_value(params.run_id)
    pod["metadata"]["labels"].update(
        {
            LABEL_RUN: run_label,
            LABEL_SHARD: str(params.shard),
            LABEL_MODEL_SOURCE: params.model.source,
            **params.labels,
        }
    )
    pod["metadata"].setdefault("annotations", {})["llm-etl.io/run-id"] = params.run_id
    spec["activeDeadlineSeconds"] = params.active_deadline_seconds
    if params.node_selector:
        spec["nodeSelector"] = dict(params.node_selector)
    if params.tolerations:
        spec["tolerations"] = [dict(t) for t in params.tolerations]
    loader, server = (
        next(c for c in spec["initContainers"] if c["name"] == n) for n in ("model-loader", "llm-server")
    )
    _loader_container(params, loader)
    _server_container(params, server)

    worker = spec["containers"][0]
    worker["image"] = params.worker_image
    worker["command"] = ["llm-etl-worker"]
    worker["args"] = [
        *params.worker_args,
        "--input", f"{INPUT_DIR}/input.{params.input_format}.gz", "--input-format", params.input_format,
        "--output", "log", "--key-file", KEY_FILE, "--run-id", params.run_id, "--shard", str(params.shard),
        "--checkpoint", "/work/checkpoint.json", "--heartbeat", HEARTBEAT_FILE,
        "--llm-url", params.server.url, "--api", params.server.defaults.api, "--model", params.model.name,
    ]  # fmt: skip
    # A batch container has no Service to be ready for; the probes read the worker's heartbeat so that a hung
    # worker is ended by the kubelet (liveness) long before the pod's deadline.
    check = ["llm-etl", "check-heartbeat", HEARTBEAT_FILE, "--max-age"]
    worker["readinessProbe"] = {"exec": {"command": [*check, "60"]}, "periodSeconds": 10, "timeoutSeconds": 5}
    worker["livenessProbe"] = {
        "exec": {"command": [*check, "300"]},
        "initialDelaySeconds": 30,
        "periodSeconds": 30,
        "timeoutSeconds": 10,
        "failureThreshold": 3,
    }
    if params.work_claim:  # the checkpoint and spool survive the pod: a retry resumes
        for volume in spec["volumes"]:
            if volume["name"] == "work":
                volume.clear()
                volume.update(name="work", persistentVolumeClaim={"claimName": params.work_claim})
    if params.model.source == "object":
        spec["volumes"].append(
            {"name": "model-url", "secret": {"secretName": params.model.url_secret, "defaultMode": 0o440}}
        )
    spec["volumes"] += [
        _models_volume(params.model),
        {"name": "input", "secret": {"secretName": params.input_secret, "defaultMode": 0o440}},
        {"name": "run-key", "secret": {"secretName": params.key_secret, "defaultMode": 0o440}},
    ]
    for container in [*spec["initContainers"], *spec["containers"]]:
        _put_first(container, ("name", "image", "command", "args"))
    return pod


def _put_first(mapping: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Reorder a manifest mapping so the keys a reader looks for first come first."""
    rest = {k: v for k, v in mapping.items() if k not in keys}
    first = {k: mapping[k] for k in keys if k in mapping}
    mapping.clear()
    mapping.update(first | rest)


def network_policy(namespace: str | None = None, *, allow_model_pull: bool = False) -> dict[str, Any]:
    """Return the NetworkPolicy that isolates enrichment pods; ``allow_model_pull`` opens DNS and HTTPS egress
    for pods whose model source is ``pull`` only."""
    policy = copy.deepcopy(load_template(NETWORK_POLICY_TEMPLATE))
    if namespace:
        policy["metadata"]["namespace"] = namespace
    if allow_model_pull:
        policy["metadata"]["name"] = "llm-etl-allow-model-pull"
        policy["spec"]["podSelector"]["matchLabels"][LABEL_MODEL_SOURCE] = "pull"
        policy["spec"]["policyTypes"] = ["Egress"]
        del policy["spec"]["ingress"]
        policy["spec"]["egress"] = [
            {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            {"ports": [{"protocol": "TCP", "port": 443}]},
        ]
    return policy


def worker_command_line(pod: dict[str, Any]) -> str:
    """The worker's command line, for logs and docs."""
    worker = pod["spec"]["containers"][0]
    return shlex.join([*worker["command"], *worker["args"]])
