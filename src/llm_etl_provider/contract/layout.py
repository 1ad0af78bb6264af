"""The enrichment pod's layout and the names of what a run creates, written once.

The pod templates (``llm_etl_provider/pod/templates``) spell the same container names, volumes and mount paths
in YAML; ``tests/unit/contract/test_layout.py`` proves that the two agree. The labels are spelled here only:
the pod builder stamps them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal, get_args

# Containers: containers[0] is the worker, named as KubernetesPodOperator's base container.
WORKER_CONTAINER = "base"
LOADER_CONTAINER = "model-loader"
SERVER_CONTAINER = "llm-server"

# Volumes and where they are mounted.
INPUT_VOLUME, INPUT_DIR = "input", "/var/run/llm-etl/input"
KEY_VOLUME, KEY_DIR = "run-key", "/var/run/llm-etl/key"
# the object transport's URLs: a Secret of their own, signed when the pod starts and renewed while it runs
URLS_VOLUME, URLS_DIR = "urls", "/var/run/llm-etl/urls"
MODEL_URL_VOLUME, MODEL_URL_DIR = "model-url", "/var/run/llm-etl/model-url"
WORK_VOLUME, WORK_DIR = "work", "/work"
MODELS_VOLUME, MODELS_DIR = "models", "/models"
TMP_VOLUME, TMP_DIR = "tmp", "/tmp"  # noqa: S108 - an emptyDir in the pod

# Files. A Secret's data key is the name of the file it mounts as.
KEY_FILE_NAME = "key"
MODEL_URL_FILE_NAME = "url"
CHECKPOINT_FILE_NAME = "checkpoint.json"
HEARTBEAT_FILE_NAME = "heartbeat"
SERVER_LOG_NAME = "llm-server.log"
DUPLICATES_FILE_NAME = "duplicates.gz"  # beside the staged shard (contract.duplicates)
REUSED_FILE_NAME = "reused.gz"  # beside the staged shard (contract.reuse)
OBJECT_TRANSPORT_FILE_NAME = (
    "object.json"  # the object transport's pre-signed URLs (contract.object_transport)
)

KEY_FILE = f"{KEY_DIR}/{KEY_FILE_NAME}"
MODEL_URL_FILE = f"{MODEL_URL_DIR}/{MODEL_URL_FILE_NAME}"
CHECKPOINT_FILE = f"{WORK_DIR}/{CHECKPOINT_FILE_NAME}"
HEARTBEAT_FILE = f"{WORK_DIR}/{HEARTBEAT_FILE_NAME}"
DUPLICATES_FILE = f"{INPUT_DIR}/{DUPLICATES_FILE_NAME}"
REUSED_FILE = f"{INPUT_DIR}/{REUSED_FILE_NAME}"
OBJECT_TRANSPORT_FILE = f"{URLS_DIR}/{OBJECT_TRANSPORT_FILE_NAME}"


def input_file_name(input_format: str) -> str:
    """A staged shard's file name (and its Secret's data key): the shard, gzip-compressed."""
    return f"input.{input_format}.gz"


def input_file(input_format: str) -> str:
    return f"{INPUT_DIR}/{input_file_name(input_format)}"


def downloaded_input_name(input_format: str) -> str:
    """The object transport: the worker's range of the input (uncompressed), in its work folder."""
    return f"input.{input_format}"


# Labels and annotations. The pod builder stamps them (the templates carry none).
APP_NAME = {"app.kubernetes.io/name": "llm-etl"}  # our pods, and what our NetworkPolicies select
MANAGED_BY = {"app.kubernetes.io/managed-by": "llm-etl-provider"}  # everything a run creates
LABEL_COMPONENT = "app.kubernetes.io/component"
# A run's pods by component: the enrichment pods see the prompts (no egress); the model-cache pod (pull and
# object sources) downloads the model and never sees a prompt
ENRICHMENT_COMPONENT = "enrichment"
MODEL_CACHE_COMPONENT = "model-cache"
LABEL_RUN = "llm-etl.io/run"  # the run id, readable (cut and hashed where too long for a label)
LABEL_RUN_KEY = "llm-etl.io/run-key"  # the pipeline's run, exactly: what selectors use (run_key)
LABEL_SHARD = "llm-etl.io/shard"
LABEL_KIND = "llm-etl.io/kind"
LABEL_MODEL_SOURCE = "llm-etl.io/model-source"
LABEL_PLAN = "llm-etl.io/plan"  # the stage's plan of the run (plan_id): what one execution staged
ANNOTATION_RUN_ID = "llm-etl.io/run-id"
ANNOTATION_DAG_ID = "llm-etl.io/dag-id"
# Unix seconds after which the sweeper may remove what the run left, whatever Airflow says of the run
ANNOTATION_EXPIRES_AT = "llm-etl.io/expires-at"
# The sweeper honours it only for a run Airflow does not know: a run Airflow counts as running is never swept.
# The object transport's pre-signed URLs live as long (S3's SigV4 allows at most 7 days).
DEFAULT_RUN_DEADLINE_SECONDS = 7 * 24 * 3600
# A pod's hard limit (activeDeadlineSeconds, from its start: the model load included): a large shard on one
# GPU runs for a day or more; the model load has a limit of its own (the operator's startup timeout).
DEFAULT_POD_TIME_LIMIT_SECONDS = 3 * 24 * 3600
DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS = 1800
# The worker container's memory limit, and what a shard's records cost it: the reader keeps an entry per id
# (a 64-bit hash and the first line, in a dict: ~60 bytes each, so ~1.5 GiB past 25 million ids) beside a
# base for Python, the HTTP lanes and the records in flight. The stage refuses a shard the limit cannot hold.
DEFAULT_WORKER_MEMORY = "1Gi"
WORKER_BASE_MEMORY_BYTES = 320 << 20
WORKER_BYTES_PER_RECORD = 64
# The pod's defaults that a deployment chooses (the [llm_etl] options of llm_etl_provider.config, which
# Airflow reads while it loads its configuration: they are here, in a module that imports no Airflow)
Backend = Literal["ollama", "llamacpp", "vllm"]  # the LLM servers a pod can run (pod.builder.BACKENDS)
BACKEND_NAMES: tuple[str, ...] = get_args(Backend)
DEFAULT_BACKEND: Backend = "ollama"
ModelSource = Literal["pull", "pvc", "object", "image"]
MODEL_SOURCES: tuple[str, ...] = get_args(ModelSource)
DEFAULT_MODEL_SOURCE: ModelSource = "pull"
DEFAULT_MODEL_PATH = "model.gguf"
DEFAULT_MODEL_SIZE = "8Gi"  # an 8B model at 4 bits is ~4.7 GB
# No registry publishes the worker's image: each deployment builds and pushes its own, so none is a default.
WORKER_IMAGE_UNSET = (
    "no worker image is given: build the worker's image and push it to a registry your nodes pull from "
    "(scripts/build-images.sh --registry REGISTRY prints its digest), then give it by digest: [llm_etl] "
    "worker_image (AIRFLOW__LLM_ETL__WORKER_IMAGE), the task group's worker_image, or render-pod's "
    "--worker-image"
)
DEFAULT_GPUS = 1  # nvidia.com/gpu per pod
# The model claim of the pull and object sources (ReadWriteMany for shards on several GPU nodes)
DEFAULT_CACHE_ACCESS_MODES = ("ReadWriteOnce",)
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def worker_memory_needed(records: int) -> int:
    """The bytes a worker needs to enrich a shard of ``records`` records (its id index and its base)."""
    return WORKER_BASE_MEMORY_BYTES + records * WORKER_BYTES_PER_RECORD


MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())


def pod_labels(component: str) -> dict[str, str]:
    """The labels every pod of ``component`` (:data:`ENRICHMENT_COMPONENT` or :data:`MODEL_CACHE_COMPONENT`)
    carries before the run's own."""
    return {**APP_NAME, LABEL_COMPONENT: component, **MANAGED_BY}


_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


def label_value(value: str) -> str:
    """Make a string a valid label value (63 characters, alphanumeric ends) without losing uniqueness."""
    if _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value).strip("-_.")[:50].strip("-_.")
    return f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:10]}".strip("-")


def run_scope(dag_id: str, group_id: str | None = None) -> str:
    """Whose runs: a DAG, and the task group of the pipeline within it, so that two DAGs with the same run id
    or two pipelines in one DAG never name, select or delete each other's resources."""
    return f"{dag_id}/{group_id}" if group_id else dag_id


def run_key(scope: str, run_id: str) -> str:
    """A short hash of the scope and the run: the ``llm-etl.io/run-key`` label, and the names' prefix."""
    return hashlib.sha256(f"{scope}\0{run_id}".encode()).hexdigest()[:12]


def run_selector(scope: str, run_id: str) -> str:
    """The label selector of everything one run of one pipeline created (and nothing else)."""
    return f"{MANAGED_SELECTOR},{LABEL_RUN_KEY}={run_key(scope, run_id)}"


def run_annotations(dag_id: str, run_id: str, expires_at: float | None = None) -> dict[str, str]:
    """What the sweeper reads on a run's resources: whose run it is, and until when it may live."""
    annotations = {ANNOTATION_DAG_ID: dag_id, ANNOTATION_RUN_ID: run_id}
    if expires_at is not None:
        annotations[ANNOTATION_EXPIRES_AT] = str(int(expires_at))
    return annotations


# Names of what a run creates.
def run_prefix(scope: str, run_id: str) -> str:
    """A short DNS-safe prefix unique to a run of a pipeline (:func:`run_scope`), for its resources' names."""
    return "llm-etl-" + run_key(scope, run_id)


def plan_id(scope: str, run_id: str, input_sha256: str, settings: dict[str, Any]) -> str:
    """The stage's plan of a run: its input's digest and the settings that cut it, for this pipeline's run.

    The same input staged the same way for the same run gives the same plan, so a stage that runs again
    (Airflow clears a shard's setup with it) finds its own staging and keeps it; another input (a run executed
    again on new data) gives another plan, whose names and published shards never mix with the first's.
    """
    fingerprint = json.dumps([scope, run_id, input_sha256, settings], sort_keys=True, default=str)
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


def plan_prefix(scope: str, run_id: str, plan: str) -> str:
    """The names' prefix of what one plan of a run staged (its key, shards, work claims)."""
    return f"{run_prefix(scope, run_id)}-{plan[:8]}"


def key_secret_name(prefix: str) -> str:
    """The Secret holding a plan's frame key (``prefix``: :func:`plan_prefix`)."""
    return f"{prefix}-key"


def shard_secret_name(prefix: str, index: int) -> str:
    return f"{prefix}-shard-{index}"


def urls_secret_name(prefix: str, index: int) -> str:
    """The object transport: a shard's URL Secret, signed when its pod starts and renewed while it runs (the
    one Secret of a run that changes)."""
    return f"{prefix}-shard-{index}-urls"


def work_claim_name(prefix: str, index: int) -> str:
    """A shard's work claim (checkpoint and spool), named after its plan: a stage that has to make a new key
    for the plan removes the claims first, since a spool sealed with the old key is junk."""
    return f"{prefix}-shard-{index}-work"


def model_claim_name(prefix: str) -> str:
    """The claim the plan's model is cached in (the ``pull`` and ``object`` sources): the model-cache pod
    downloads into it, where no prompt is, and every enrichment pod of the plan mounts it read-only."""
    return f"{prefix}-model"


def run_output_folder(scope: str, run_id: str) -> str:
    """Where a run of a pipeline publishes, under the output path: ``<dag>/<group>/<run>``, so that two DAGs
    or two pipelines in one DAG with the same output path and run ids never write (or clean) each other's."""
    parts = [*scope.split("/"), run_id.replace(":", "").replace("+", "")]
    if any(not part or set(part) == {"."} for part in parts):
        raise ValueError(f"{scope}/{run_id} cannot name an output folder: a part of it is empty or dots")
    return "/".join(parts)


def shard_folder(index: int) -> str:
    """A shard's folder: in the published output, and in local execution's staging."""
    return f"shard-{index:05d}"


GOLDEN_PREFIX = "golden-"  # the published folders of the golden set's shards (the quality gate)


def published_folder(index: int, golden: bool = False) -> str:
    """Where a shard publishes under its run's output: ``shard-<index>``, or for a shard of the golden set
    ``golden-<index>``, beside the results and never among them."""
    return f"{GOLDEN_PREFIX}{index:05d}" if golden else shard_folder(index)
