"""checkov (Kubernetes framework, offline) finds nothing to fail in any pod the operator can render.

The pods are rendered as a production deployment would submit them: every image pinned by digest (CKV_K8S_43;
the defaults carry tags because the worker image's digest exists only once you build it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_etl_provider.backends.llama_server import cache_dir
from llm_etl_provider.pod.builder import BACKENDS, build_pod, network_policy
from tests.unit.pod.test_builder import VARIANTS, WORKER_IMAGE, params

REQUIREMENTS = Path(__file__).resolve().parents[3] / "tools" / "checkov-requirements.txt"


def checkov() -> Path:
    """The checkov that scripts/setup.sh installs from the hash-locked tools/checkov-requirements.txt."""
    version = re.search(r"^checkov==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE)
    assert version is not None
    path = Path(
        os.environ.get("LLM_ETL_CHECKOV") or cache_dir() / f"checkov-{version[1]}" / "bin" / "checkov"
    )
    if not path.is_file():
        pytest.fail(f"checkov is not installed at {path}: run scripts/setup.sh")
    return path


def pinned(image: str) -> str:
    # The digest's value does not matter to the check, only that the reference is immutable.
    return f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def run_checkov(folder: Path) -> dict[str, Any]:
    """checkov's JSON report on the manifests in ``folder`` (offline: no policy download)."""
    done = subprocess.run(
        [checkov(), "--framework", "kubernetes", "--skip-download", "-d", folder, "-o", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_every_pod_and_network_policy_passes_checkov(tmp_path):
    for variant, pod_params in VARIANTS.items():
        server = dataclasses.replace(
            pod_params.server, image=pinned(BACKENDS[pod_params.server.backend].image)
        )
        pinned_params = dataclasses.replace(pod_params, server=server, worker_image=pinned(WORKER_IMAGE))
        pod = build_pod(pinned_params)
        pod["metadata"]["namespace"] = "llm-etl"
        (tmp_path / f"pod-{variant}.yaml").write_text(yaml.safe_dump(pod))
    for model_cache in (False, True):
        policy = network_policy("model-cache" if model_cache else "enrichment", "pull", namespace="llm-etl")
        (tmp_path / f"policy-{model_cache}.yaml").write_text(yaml.safe_dump(policy))
    report = run_checkov(tmp_path)
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["passed"] > 20 * len(VARIANTS)  # it did check the pods
    assert report["summary"]["parsing_errors"] == 0


def test_checkov_does_fail_a_pod_that_breaks_the_rules(tmp_path):
    pod = build_pod(params())  # tags, no namespace: the checks this module's pods pass by pinning
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    failed = {check["check_id"] for check in run_checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_43", "CKV_K8S_21"} <= failed
