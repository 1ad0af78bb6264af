"""``llm-etl render-pod`` names the images it is given, by digest, and their pull policy."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llm_etl_provider.cli import main

WORKER = "registry.example/llm-etl/worker@sha256:" + "a" * 64
SERVER = "registry.example/llm-etl/llama-server@sha256:" + "b" * 64


def test_render_pod_names_the_images_by_digest_and_their_pull_policy(capsys):
    code = main(
        ["render-pod", "--backend", "llamacpp", "--model-source", "object", "--model-url-secret", "u",
         "--model-sha256", "c" * 64, "--model", "m", "--gpus", "0", "--worker-image", WORKER,
         "--server-image", SERVER, "--image-pull-policy", "IfNotPresent"]
    )  # fmt: skip
    assert code == 0
    pods = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d["kind"] == "Pod"]
    assert len(pods) == 2  # the enrichment pod and the model-cache pod
    images = {
        (pod["metadata"]["labels"]["app.kubernetes.io/component"], c["name"]): (
            c["image"],
            c["imagePullPolicy"],
        )
        for pod in pods
        for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    }
    assert images == {
        ("enrichment", "model-loader"): (WORKER, "IfNotPresent"),
        ("enrichment", "llm-server"): (SERVER, "IfNotPresent"),
        ("enrichment", "base"): (WORKER, "IfNotPresent"),
        ("model-cache", "base"): (WORKER, "IfNotPresent"),
    }


def test_render_pod_and_the_operators_read_the_model_s_options_alike():
    """One construction of the model (``ModelSpec.of``) from the operators' arguments and the command line's:
    the same options give the same model, and options left out the same defaults."""
    from llm_etl_provider.cli import build_parser
    from llm_etl_provider.operators.enrichment import LLMEnrichmentOperator
    from llm_etl_provider.operators.model_cache import ModelCacheOperator
    from llm_etl_provider.pod.builder import ModelSpec

    given: dict[str, Any] = {"model_source": "object", "model_url_secret": "u", "model_sha256": "c" * 64}
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
    cli = ModelSpec.of("m", build_parser().parse_args(["render-pod", *argv]))
    enrich = ModelSpec.of("m", LLMEnrichmentOperator(task_id="enrich", shard={}, model="m", **given))
    cache = ModelSpec.of("m", ModelCacheOperator(task_id="cache", shards=[], model="m", **given))
    assert cli == enrich == cache == ModelSpec("m", source="object", url_secret="u", sha256="c" * 64)
    defaults = ModelSpec.of("m", build_parser().parse_args(["render-pod"]))
    assert (
        defaults
        == ModelSpec.of("m", LLMEnrichmentOperator(task_id="e", shard={}, model="m"))
        == ModelSpec("m")
    )


@pytest.mark.parametrize(
    ("backend", "source", "options"),
    [
        ("ollama", "pull", []),
        ("llamacpp", "object", ["--model-url-secret", "u", "--model-sha256", "c" * 64]),
        ("llamacpp", "pvc", ["--model-claim", "models"]),
        ("vllm", "image", ["--model-image", "registry.example/m:1"]),
    ],
)
def test_render_pod_opens_egress_for_a_model_to_the_model_cache_pod_only(capsys, backend, source, options):
    """The namespace's policies that render-pod prints follow the one rule a run's follow (``pod_egress``): no
    egress for the enrichment pods, whatever the source; DNS and HTTPS for a model-cache pod, which only
    ``pull`` and ``object`` models have."""
    argv = ["render-pod", "--backend", backend, "--model-source", source, "--worker-image", WORKER, *options]
    assert main(argv) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    policies = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p["spec"]["egress"]
        for p in documents
        if p["kind"] == "NetworkPolicy"
    }
    pods = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in documents if p["kind"] == "Pod"}
    assert set(policies) == pods
    assert policies["enrichment"] == []
    if source in ("pull", "object"):
        assert {port["port"] for rule in policies["model-cache"] for port in rule["ports"]} == {53, 443}
    else:
        assert "model-cache" not in policies
