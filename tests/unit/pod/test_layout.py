"""The packaged pod template and the layout constants name the same containers, volumes, paths and labels."""

from __future__ import annotations

from llm_etl_provider.contract import layout
from llm_etl_provider.pod.builder import (
    MODEL_CACHE_POD_TEMPLATE,
    NETWORK_POLICY_TEMPLATE,
    POD_TEMPLATE,
    load_template,
)


def mounts(container):
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def test_the_template_uses_the_layouts_names_and_paths():
    pod = load_template(POD_TEMPLATE)
    spec = pod["spec"]
    assert pod["metadata"]["labels"] == layout.POD_LABELS
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


def test_the_network_policy_selects_the_pods_the_template_labels():
    policy = load_template(NETWORK_POLICY_TEMPLATE)
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= layout.POD_LABELS.items()
    assert policy["metadata"]["labels"].items() >= layout.MANAGED_BY.items()


def test_the_templates_label_each_pod_with_its_component():
    component = layout.LABEL_COMPONENT
    assert load_template(POD_TEMPLATE)["metadata"]["labels"][component] == layout.ENRICHMENT_COMPONENT
    cache = load_template(MODEL_CACHE_POD_TEMPLATE)["metadata"]["labels"][component]
    assert cache == layout.MODEL_CACHE_COMPONENT


def test_pod_files_live_under_their_mounts():
    assert f"{layout.KEY_DIR}/{layout.KEY_FILE_NAME}" == layout.KEY_FILE
    assert layout.input_file("csv") == f"{layout.INPUT_DIR}/input.csv.gz"
    assert layout.shard_folder(7) == "shard-00007"
