"""``llm-etl render-pod`` names the images it is given, by digest, and their pull policy."""

from __future__ import annotations

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
