"""Names, labels and manifests of what one enrichment run creates in Kubernetes, without Airflow."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from llm_etl_provider.pod.builder import LABEL_RUN, LABEL_SHARD, label_value

MANAGED_BY = {"app.kubernetes.io/managed-by": "llm-etl-provider"}
KEY_FILE_NAME = "key"  # the key Secret's data key, so the mounted file is ./key


def run_prefix(dag_id: str, run_id: str) -> str:
    """A short DNS-safe prefix unique to a DAG run, for the run's Secret and pod names."""
    return "llm-etl-" + hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:12]


def key_secret_name(dag_id: str, run_id: str) -> str:
    """The Secret holding a run's frame key."""
    return f"{run_prefix(dag_id, run_id)}-key"


MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())


def run_selector(run_id: str) -> str:
    """The label selector of everything a run created (and nothing llm-etl-provider did not create)."""
    return f"{MANAGED_SELECTOR},{LABEL_RUN}={label_value(run_id)}"


EXECUTION_MODES = ("kubernetes", "local")


def checked_execution_mode(mode: str) -> str:
    """Return ``mode`` if the operators know it: a typo must fail when the DAG is parsed, not at run time."""
    if mode not in EXECUTION_MODES:
        raise ValueError(f"execution_mode must be 'kubernetes' or 'local', not {mode!r}")
    return mode


def local_run_dir(local_dir: str | None, dag_id: str, run_id: str) -> Path:
    """Local execution mode's staging folder of one run: its shards, key and worker logs."""
    return Path(local_dir or ".") / run_prefix(dag_id, run_id)


def secret_manifest(
    name: str, run_id: str, data: dict[str, bytes], *, kind: str, shard: int | None = None
) -> dict[str, Any]:
    """An immutable Opaque Secret labelled with its run (the sweeper finds it by label and age)."""
    labels = {**MANAGED_BY, LABEL_RUN: label_value(run_id), "llm-etl.io/kind": kind}
    if shard is not None:
        labels["llm-etl.io/shard"] = str(shard)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"llm-etl.io/run-id": run_id},
        },
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def work_claim_manifest(
    name: str, run_id: str, shard: int, size: str, storage_class: str | None = None
) -> dict[str, Any]:
    """A shard's work volume that outlives its pod: the worker's checkpoint and frame spool, so that a retry
    in a new pod (after a preemption) resumes where the lost pod stopped."""
    labels = {
        **MANAGED_BY,
        LABEL_RUN: label_value(run_id),
        "llm-etl.io/kind": "work",
        LABEL_SHARD: str(shard),
    }
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels, "annotations": {"llm-etl.io/run-id": run_id}},
        "spec": spec,
    }
