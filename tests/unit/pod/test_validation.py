"""Every pod the operator can render passes kubernetes-validate in strict mode, K8s 1.29 to 1.37."""

from __future__ import annotations

import kubernetes_validate
import pytest

from llm_etl_provider.pod.builder import (
    SUPPORTED_SOURCES,
    ModelSpec,
    ServerSpec,
    build_model_cache_pod,
    build_pod,
    network_policy,
)
from tests.unit.pod.test_builder import VARIANTS, WORKER_IMAGE, params

VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]


# OCI image volumes (the `image` model source) are beta and on by default from 1.33; other pods from 1.29.
CASES = [
    (variant, version)
    for variant in VARIANTS
    for version in VERSIONS
    if "-image-" not in variant or int(version.split(".")[1]) >= 33
]


@pytest.mark.parametrize(("variant", "version"), CASES)
def test_pods_validate_strictly(variant, version):
    pod = build_pod(VARIANTS[variant])
    pod["metadata"]["name"] = "llm-etl-run-shard-0"
    kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("model_cache", [False, True])
def test_network_policies_validate_strictly(version, model_cache):
    component = "model-cache" if model_cache else "enrichment"
    policy = network_policy(component, "pull", namespace="etl")
    kubernetes_validate.validate(policy, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("store", [(), (("10.0.0.7", 9000),)], ids=["log", "object"])
def test_shard_network_policies_validate_strictly(version, store):
    labels = {"llm-etl.io/run-key": "0123456789ab", "llm-etl.io/shard": "0"}
    policy = network_policy(
        "enrichment", "pvc", name="llm-etl-abc-shard-0-network", selected=labels, store_egress=store
    )
    kubernetes_validate.validate(policy, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("backend", "source"), [("ollama", "pull"), ("llamacpp", "object")])
def test_model_cache_pods_and_policies_validate_strictly(version, backend, source):
    cache = build_model_cache_pod(
        ModelSpec("m", source=source, sha256="a" * 64, url_secret="u", cache_claim="c"),
        ServerSpec(backend),
        worker_image=WORKER_IMAGE,
    )
    cache["metadata"]["name"] = "llm-etl-run-model-cache"
    kubernetes_validate.validate(cache, version, strict=True)
    labels = {"llm-etl.io/run-key": "0123456789ab", "llm-etl.io/plan": "0123456789abcdef"}
    kubernetes_validate.validate(
        network_policy("model-cache", source, name="c", selected=labels), version, strict=True
    )


def test_validation_is_not_vacuous():
    pod = build_pod(params())
    pod["spec"]["initContainers"][1]["restartPolicy"] = "Sometimes"
    pod["spec"]["containers"][0]["bogusField"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.33.0", strict=True)


def test_every_backend_has_a_source():
    assert all(SUPPORTED_SOURCES.values())
