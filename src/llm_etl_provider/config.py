"""The provider's Airflow configuration, section ``[llm_etl]``: the deployment settings of the example DAGs.

What a run chooses is a Param of the DAG (the trigger form); what a DAG author chooses is an argument of
``llm_enrichment_task_group`` and the operators; what one deployment shares (its execution mode, namespace,
model source, images, GPUs, the Params' defaults ...) is an option here, declared once as a field of
:class:`LLMEtlConfig`. From the same fields come the ``config`` of the provider's metadata
(:func:`provider_config`, so that ``airflow config list`` and ``airflow config get-value llm_etl <option>``
show them) and the typed values the example DAGs read (:meth:`LLMEtlConfig.from_airflow`). Airflow reads
them as it reads its own: ``[llm_etl]`` in ``airflow.cfg`` or ``AIRFLOW__LLM_ETL__<OPTION>``.

This module imports no Airflow: Airflow reads the provider's metadata, and so these declarations, while it
loads its own configuration. An option with no default (None) leaves the argument it feeds at the task
group's or the operator's own default, written there. The declared defaults are also the fallbacks of every
read, so that a process in which Airflow has not loaded the providers' configuration reads the same values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any, Protocol, Union, get_args, get_origin, get_type_hints

from llm_etl_provider.backends import (
    DEFAULT_EXECUTION_MODE,
    DEFAULT_KUBERNETES_CONN_ID,
    DEFAULT_LOCAL_DIR,
    DEFAULT_SWEEP_TTL_SECONDS,
    EXAMPLE_NAMESPACE,
    EXECUTION_MODES,
    LOCAL_MODE,
)
from llm_etl_provider.contract.invocation import default_of, name_list
from llm_etl_provider.contract.layout import (
    BACKEND_NAMES,
    DEFAULT_BACKEND,
    DEFAULT_CACHE_ACCESS_MODES,
    DEFAULT_GPUS,
    DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS,
    DEFAULT_MODEL_PATH,
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODEL_SOURCE,
    DEFAULT_POD_TIME_LIMIT_SECONDS,
    MODEL_SOURCES,
    PULL_POLICIES,
)

SECTION = "llm_etl"
VERSION_ADDED = "0.1.0"
_TRUE, _FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


class ConfigSource(Protocol):
    """Airflow's configuration parser, as far as this module reads it."""

    def get(self, section: str, key: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Option:
    """How one field of :class:`LLMEtlConfig` is described to Airflow."""

    description: str
    example: str | None = None
    choices: tuple[str, ...] | None = None


def _option(default: Any, description: str, *, example: str | None = None, **spec: Any) -> Any:
    return field(default=default, metadata={"option": Option(description, example, **spec)})


def env_var(name: str) -> str:
    """The environment variable that sets option ``name`` (Airflow's rule)."""
    return f"AIRFLOW__{SECTION.upper()}__{name.upper()}"


@dataclass(frozen=True, kw_only=True)
class LLMEtlConfig:
    """The ``[llm_etl]`` options, typed. Lists are comma-separated in the configuration."""

    execution_mode: str = _option(
        DEFAULT_EXECUTION_MODE,
        "How the example DAGs run each shard: kubernetes (a pod per shard) or local (local processes, no "
        "Kubernetes: the bundled model served by llama.cpp's server, or the server of llm_conn_id).",
        example="local",
        choices=EXECUTION_MODES,
    )
    namespace: str = _option(
        EXAMPLE_NAMESPACE, "The namespace of the runs' pods, Secrets and claims (kubernetes mode)."
    )
    kubernetes_conn_id: str = _option(
        DEFAULT_KUBERNETES_CONN_ID, "The Kubernetes connection (kubernetes mode)."
    )
    llm_conn_id: str | None = _option(
        None,
        "Local mode: enrich through the server of this llm_etl connection (e.g. an Ollama beside Airflow) "
        "instead of the bundled model.",
        example="llm_etl_default",
    )
    local_dir: str = _option(
        DEFAULT_LOCAL_DIR,
        "Local mode: the staging folder of the runs' shards and keys, which the sweeper sweeps.",
    )
    model_source: str = _option(
        DEFAULT_MODEL_SOURCE,
        "Where the pods' model comes from: pull (the Ollama registry) or object (a GGUF file over HTTPS), "
        "downloaded once per run by a pod that sees no prompt; pvc (a claim holding it) or image (an OCI "
        "image volume).",
        example="pvc",
        choices=MODEL_SOURCES,
    )
    model_url_secret: str | None = _option(
        None, "object: a Secret whose key url holds the model's download URL.", example="model-url"
    )
    model_sha256: str | None = _option(
        None, "object: the model file's sha256 (checked for pvc and image too)."
    )
    model_claim: str | None = _option(
        None, "pvc: the PersistentVolumeClaim holding the model.", example="models"
    )
    model_image: str | None = _option(None, "image: the OCI image holding the model.")
    model_path: str = _option(DEFAULT_MODEL_PATH, "The model's path in its volume (a GGUF file or a folder).")
    model_size: str = _option(
        DEFAULT_MODEL_SIZE, "pull and object: room for the model, the model claim's size."
    )
    model_cache_access_modes: tuple[str, ...] = _option(
        DEFAULT_CACHE_ACCESS_MODES,
        "pull and object: the model claim's access modes, comma-separated; ReadWriteMany (with a storage "
        "class that offers it) for shards on several GPU nodes.",
        example="ReadWriteMany",
    )
    model_cache_storage_class: str | None = _option(
        None, "pull and object: the model claim's storage class (default: the cluster's)."
    )
    worker_image: str | None = _option(
        None,
        "The worker's image, required in kubernetes mode: no registry publishes it, build and push yours "
        "(scripts/build-images.sh --registry REGISTRY prints its digest) and give it by digest.",
        example="registry.example.com/llm-etl/worker@sha256:...",
    )
    backend: str = _option(
        DEFAULT_BACKEND,
        "The LLM server in each pod: ollama, llamacpp or vllm (the example DAG's default, and the server of "
        "llm-etl batches in kubernetes mode).",
        example="llamacpp",
        choices=BACKEND_NAMES,
    )
    server_image: str | None = _option(None, "The LLM server's image (default: the backend's).")
    image_pull_policy: str | None = _option(
        None,
        "Every container's pull policy (default: Always); IfNotPresent for images loaded into the nodes.",
        example="IfNotPresent",
        choices=PULL_POLICIES,
    )
    gpus: int = _option(DEFAULT_GPUS, "nvidia.com/gpu per pod; 0 for CPU.")
    gpu_pool: str | None = _option(
        None,
        "An Airflow pool with a slot per GPU: each shard takes gpus slots, so that shards beyond the GPUs "
        "wait in Airflow instead of as Pending pods that the start-up timeout fails.",
        example="llm-etl-gpus",
    )
    deferrable: bool | None = _option(
        None,
        "Whether the triggerer watches the pods, and polls the example's LLM batch (default: Airflow's "
        "[operators] default_deferrable).",
        example="True",
    )
    pod_time_limit_seconds: int = _option(
        DEFAULT_POD_TIME_LIMIT_SECONDS,
        "Each shard's pod's hard limit from its start (activeDeadlineSeconds); a hung worker is ended long "
        "before by its liveness probe, so it only has to outlast the largest shard.",
    )
    startup_timeout_seconds: int = _option(
        DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS,
        "How long a shard's pod may take to start, the model load included.",
    )
    work_claim_size: str | None = _option(
        None,
        "Each shard's checkpoint and frame spool on a claim of this size, so that the retry of a pod lost "
        "with its node resumes where it stopped (default: an emptyDir).",
        example="1Gi",
    )
    work_storage_class: str | None = _option(None, "The work claims' storage class (default: the cluster's).")
    store_cidrs: tuple[str, ...] | None = _option(
        None,
        "The object transport: the address ranges where the pods may reach the store, comma-separated, for "
        "a store whose addresses rotate (AWS S3's ranges; default: its host's addresses at the stage).",
        example="52.216.0.0/15,3.5.0.0/19",
    )
    checkpoint_every: int = _option(
        default_of("checkpoint_every"),
        "Records between the worker's checkpoints (with the object transport, a part object each).",
    )
    schedule: str | None = _option(
        None,
        "The enrichment DAG's schedule, a cron expression (default: triggered only); give the Params' "
        "defaults with it.",
        example="0 2 * * *",
    )
    default_input: str | None = _option(
        None,
        "The input Param's default, any URI (default: none, the trigger form asks).",
        example="s3://aws_default@bucket/input/records.jsonl",
    )
    default_output: str | None = _option(
        None,
        "The output Param's default, any URI (default: none, the trigger form asks); the sweeper's output "
        "folder unless sweep_outputs is given.",
        example="s3://aws_default@bucket/output",
    )
    default_model: str | None = _option(
        None,
        "The model Param's default (default: none, the trigger form asks; in local mode, the connection's "
        "model or the bundled one).",
        example="llama3.2:3b",
    )
    sweep_schedule: str = _option("*/15 * * * *", "The sweeper DAG's schedule.")
    sweep_ttl_seconds: int = _option(
        DEFAULT_SWEEP_TTL_SECONDS,
        "The sweeper: what carries no run deadline, and killed extractions' staging, is removed once older.",
    )
    sweep_outputs: tuple[str, ...] | None = _option(
        None,
        "The sweeper: output folders under which to remove killed extractions' staging, comma-separated "
        "(default: default_output).",
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value, choices = getattr(self, item.name), _spec(item).choices
            if choices and value is not None and value not in choices:
                raise ValueError(
                    f"[{SECTION}] {item.name} must be one of {', '.join(choices)}, not {value!r} "
                    f"(airflow.cfg or {env_var(item.name)})"
                )

    @classmethod
    def read(cls, conf: ConfigSource) -> LLMEtlConfig:
        """The options as ``conf`` (Airflow's configuration) has them, each with its declared default."""
        values = {}
        for item in dataclasses.fields(cls):
            text = conf.get(SECTION, item.name, fallback=_default_text(item.default))
            values[item.name] = _parse(item.name, text)
        return cls(**values)

    def task_group_arguments(self) -> dict[str, Any]:
        """The deployment's arguments of ``llm_enrichment_task_group``: its execution mode, namespace, local
        folder and checkpoint interval, and the settings of that mode (Kubernetes: the connection, the model's
        source, images, GPUs and their pool, claims; local: the LLM connection)."""
        arguments: dict[str, Any] = {
            "execution_mode": self.execution_mode,
            "namespace": self.namespace,
            "local_dir": self.local_dir,
            "checkpoint_every": self.checkpoint_every,
        }
        if self.execution_mode == LOCAL_MODE:
            # the bundled GGUF (sha256-checked) served by llama.cpp's server, or a connection's server
            return {**arguments, "llm_conn_id": self.llm_conn_id}
        arguments.update(
            kubernetes_conn_id=self.kubernetes_conn_id,
            model_source=self.model_source,
            model_url_secret=self.model_url_secret,
            model_sha256=self.model_sha256,
            model_claim=self.model_claim,
            model_image=self.model_image,
            model_path=self.model_path,
            model_size=self.model_size,
            # pull and object: the claim the model-cache pod downloads into; ReadWriteMany for several nodes
            model_cache_access_modes=self.model_cache_access_modes,
            model_cache_storage_class=self.model_cache_storage_class,
            worker_image=self.worker_image,
            server_image=self.server_image,
            image_pull_policy=self.image_pull_policy,  # IfNotPresent for images loaded into the nodes
            gpus=self.gpus,
            pod_time_limit_seconds=self.pod_time_limit_seconds,
            startup_timeout_seconds=self.startup_timeout_seconds,
            # checkpoints on a claim that outlives a lost pod, so that its retry resumes
            work_claim_size=self.work_claim_size,
            work_storage_class=self.work_storage_class,
            # the object transport: where the pods may reach a store whose addresses rotate (AWS S3's ranges)
            store_cidrs=self.store_cidrs,
        )
        if self.gpu_pool:
            # a pool with a slot per GPU: shards beyond the GPUs queue in Airflow, not as Pending pods
            arguments.update(pool=self.gpu_pool, pool_slots=max(self.gpus, 1))
        if self.deferrable is not None:  # unset: Airflow's [operators] default_deferrable
            arguments["deferrable"] = self.deferrable
        return arguments

    @classmethod
    def from_airflow(cls) -> LLMEtlConfig:
        """The options from Airflow's configuration (``airflow.cfg``, ``AIRFLOW__LLM_ETL__*``)."""
        try:
            from airflow.sdk.configuration import conf
        except ImportError:  # an Airflow whose Task SDK has no configuration of its own
            from airflow.configuration import conf
        return cls.read(conf)


def _spec(item: dataclasses.Field[Any]) -> Option:
    spec: Option = item.metadata["option"]
    return spec


_FIELDS = {item.name: item for item in dataclasses.fields(LLMEtlConfig)}
_HINTS = get_type_hints(LLMEtlConfig)
_TYPES: dict[Any, str] = {str: "string", int: "integer", bool: "boolean", tuple: "string"}


def _kind(name: str) -> Any:
    """The option's type without None: ``str``, ``int``, ``bool`` or ``tuple`` (a comma-separated list)."""
    hint = _HINTS[name]
    kinds = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    (kind,) = (kind for kind in kinds if kind is not NoneType)
    return get_origin(kind) or kind


def _default_text(value: Any) -> str:
    """A default as Airflow holds it: text; an empty text for none."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _parse(name: str, text: Any) -> Any:
    """Option ``name``'s value from its text; an empty text stands for its default."""
    text = "" if text is None else str(text).strip()
    if not text:
        return _FIELDS[name].default
    kind = _kind(name)
    where = f"[{SECTION}] {name} (airflow.cfg or {env_var(name)})"
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{where} must be an integer, not {text!r}") from None
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{where} must be true or false, not {text!r}")
        return text.lower() in _TRUE
    if kind is tuple:
        return name_list(text)
    return text


def provider_config() -> dict[str, Any]:
    """The ``config`` of the provider's metadata: section ``[llm_etl]``, each option with its description,
    type, example and default, as Airflow lists them."""
    options = {}
    for name, item in _FIELDS.items():
        spec = _spec(item)
        description = spec.description
        if spec.choices:
            description += f" One of: {', '.join(spec.choices)}."
        options[name] = {
            "description": description,
            "version_added": VERSION_ADDED,
            "type": _TYPES[_kind(name)],
            "example": spec.example,
            "default": _default_text(item.default),
        }
    return {
        SECTION: {
            "description": "The deployment settings of llm-etl-provider's example DAGs "
            "(dags/llm_enrichment.py and dags/llm_etl_sweeper.py): what the DAGs need when they are parsed. "
            "A run's choices are the DAG's Params; a DAG of your own passes the task group's arguments "
            "instead.",
            "options": options,
        }
    }
