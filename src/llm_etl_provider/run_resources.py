"""Names, labels and manifests of what one enrichment run creates in Kubernetes (Secrets), without Airflow."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from llm_etl_provider.pod.builder import LABEL_RUN, label_value

MANAGED_BY = {"app.kubernetes.io/managed-by": "llm-etl-provider"}
KEY_FILE_NAME = "key"  # the key Secret's data key, so the mounted file is ./key


def run_prefix(dag_id: str, run_id: str) -> str:
    """A short DNS-safe prefix unique to a DAG run, for the run's Secret and pod names."""
    return "llm-etl-" + hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:12]


def key_secret_name(dag_id: str, run_id: str) -> str:
    """The Secret holding a run's frame key."""
    return f"{run_prefix(dag_id, run_id)}-key"


def run_selector(run_id: str) -> str:
    """The label selector of everything a run created."""
    return f"{LABEL_RUN}={label_value(run_id)}"


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
