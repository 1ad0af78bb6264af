"""``llm-etl render-pod`` names the images it is given, by digest, and their pull policy."""

from __future__ import annotations

from typing import Any

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
