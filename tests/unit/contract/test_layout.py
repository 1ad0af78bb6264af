"""The packaged pod templates and the layout constants name the same containers, volumes and paths; the labels
are the layout's alone, stamped by the builder."""

from __future__ import annotations

import pytest

from llm_etl_provider.contract import layout
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.pod.builder import (
    MODEL_CACHE_POD_TEMPLATE,
    NETWORK_POLICY_TEMPLATE,
    POD_TEMPLATE,
    ModelSpec,
    PodParams,
    ServerSpec,
    build_model_cache_pod,
    build_pod,
    load_template,
    network_policy,
    pod_invocation,
)


def mounts(container):
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def test_the_template_uses_the_layouts_names_and_paths():
    pod = load_template(POD_TEMPLATE)
    spec = pod["spec"]
    assert [c["name"] for c in spec["containers"]] == [layout.WORKER_CONTAINER]
    assert [c["name"] for c in spec["initContainers"]] == [layout.LOADER_CONTAINER, layout.SERVER_CONTAINER]
    assert mounts(spec["containers"][0]) == {
        layout.INPUT_VOLUME: layout.INPUT_DIR,
        layout.KEY_VOLUME: layout.KEY_DIR,
        layout.WORK_VOLUME: layout.WORK_DIR,
        layout.TMP_VOLUME: layout.TMP_DIR,
    }
    for container in spec["initContainers"]:
        assert mounts(container) == {
            layout.MODELS_VOLUME: layout.MODELS_DIR,
            layout.TMP_VOLUME: layout.TMP_DIR,
        }
    assert {v["name"] for v in spec["volumes"]} == {layout.TMP_VOLUME, layout.WORK_VOLUME}


@pytest.mark.parametrize("template", [POD_TEMPLATE, MODEL_CACHE_POD_TEMPLATE, NETWORK_POLICY_TEMPLATE])
def test_the_templates_spell_no_label(template):
    """Each label is spelled once, in the layout: the builder stamps it, the YAML carries none."""
    manifest = load_template(template)
    assert "labels" not in manifest["metadata"]
    assert "matchLabels" not in manifest["spec"].get("podSelector", {})


def test_the_builder_labels_each_pod_with_its_component():
    model, server = ModelSpec("m", cache_claim="c"), ServerSpec()
    shard = ShardDescriptor(index=0, records=1, line_offset=0, input_format="jsonl")
    invocation = pod_invocation({"task": "sentiment"}, run_id="r", shard=shard, server=server, model="m")
    pod = build_pod(
        PodParams(
            invocation=invocation,
            model=model,
            server=server,
            input_secret="i",
            key_secret="k",
            worker_image="w",
        )
    )
    assert pod["metadata"]["labels"].items() >= layout.pod_labels(layout.ENRICHMENT_COMPONENT).items()
    cache = build_model_cache_pod(model, server, worker_image="w")
    assert cache["metadata"]["labels"].items() >= layout.pod_labels(layout.MODEL_CACHE_COMPONENT).items()


@pytest.mark.parametrize("component", [layout.ENRICHMENT_COMPONENT, layout.MODEL_CACHE_COMPONENT])
def test_the_network_policy_selects_the_pods_of_its_component(component):
    policy = network_policy(component, "pull")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= layout.pod_labels(component).items()
    assert selected[layout.LABEL_COMPONENT] == component
    assert policy["metadata"]["labels"].items() >= layout.MANAGED_BY.items()


def test_pod_files_live_under_their_mounts():
    assert f"{layout.KEY_DIR}/{layout.KEY_FILE_NAME}" == layout.KEY_FILE
    assert layout.input_file("csv") == f"{layout.INPUT_DIR}/input.csv.gz"
    assert layout.shard_folder(7) == "shard-00007"
