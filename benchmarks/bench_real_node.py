"""What a shard's pod costs before and after its records, on the real node (kubelet, containerd, runc, the
pod's own images): per phase, from the pod's status and its worker's CRI log timestamps.

    .venv/bin/python -m benchmarks.bench_real_node --images ~/.cache/llm-etl-provider/images [--pods 3]

``--images``: the OCI archives of ``scripts/build-images.sh --local-base --pause --oci-dir DIR``.
Phases: sandbox and images (created → loader started; includes scheduling), loader (its check of the
model), server ready (the server's start → the worker's start: the native sidecar's startup probe passed),
first record (the worker's start → its first result frame, written after one record with
``checkpoint_every=1``), records (→ the worker's end), pod Succeeded (the worker's end → the sidecar stopped
and the pod ended).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, sample_records
from llm_etl_dev.cluster import DevCluster, NodeOptions
from llm_etl_dev.cluster.real_node import REAL_NODE_NAME
from llm_etl_provider.backends import EXAMPLE_NAMESPACE
from llm_etl_provider.backends.llama_server import MODEL_FILE, MODEL_SHA256
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.pod.builder import (
    ModelSpec,
    PodParams,
    ServerSpec,
    build_pod,
    pod_invocation,
    set_pull_policy,
)
from llm_etl_provider.transport.frames import FORMAT
from llm_etl_provider.transport.keys import encode_key, new_key

NAMESPACE = EXAMPLE_NAMESPACE


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _seconds(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 2)


def one_pod(admin: Any, index: int, images: dict[str, str], records: int) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{NAMESPACE}"
    lines = "".join(json.dumps(r) + "\n" for r in sample_records(records)).encode()
    names = {"input": f"bench-{index}-shard", "key": f"bench-{index}-key", "pod": f"bench-{index}"}
    admin.post(f"{path}/secrets", {"metadata": {"name": names["input"]}, "immutable": True,
               "data": {"input.jsonl.gz": base64.b64encode(gzip.compress(lines)).decode()}})  # fmt: skip
    admin.post(f"{path}/secrets", {"metadata": {"name": names["key"]}, "immutable": True,
               "data": {"key": base64.b64encode(encode_key(new_key()).encode()).decode()}})  # fmt: skip
    server = ServerSpec(backend="llamacpp", gpus=0, image=images["llama-server"], cpu="2", memory="2Gi")
    shard = ShardDescriptor(index=0, records=records, line_offset=0, input_format="jsonl")
    settings = {"task": "sentiment", "template": "{review}", "checkpoint_every": 1}
    invocation = pod_invocation(settings, run_id=f"bench-{index}", shard=shard, server=server, model="m")
    model = ModelSpec(name="m", source="pvc", claim="llm-etl-models", path=MODEL_FILE, sha256=MODEL_SHA256)
    pod = build_pod(
        PodParams(
            invocation=invocation, model=model, server=server, input_secret=names["input"],
            key_secret=names["key"], worker_image=images["worker"],
        )
    )  # fmt: skip
    pod["metadata"]["name"] = names["pod"]
    set_pull_policy(pod, "IfNotPresent")
    admin.post(f"{path}/pods", pod)
    while (status := admin.get(f"{path}/pods/{names['pod']}")["status"]).get("phase") not in (
        "Succeeded",
        "Failed",
    ):
        time.sleep(0.5)
    assert status["phase"] == "Succeeded", status
    created = _time(admin.get(f"{path}/pods/{names['pod']}")["metadata"]["creationTimestamp"])
    states = {
        s["name"]: s["state"]["terminated"]
        for s in status["initContainerStatuses"] + status["containerStatuses"]
    }
    log = admin.request(
        "GET", f"{path}/pods/{names['pod']}/log", raw=True, params={"container": "base", "timestamps": "true"}
    )
    first_frame = next(line.split(" ", 1)[0] for line in log.splitlines() if f" {FORMAT} " in f" {line}")
    loader, server_state, worker = states["model-loader"], states["llm-server"], states["base"]
    ended = max(_time(s["finishedAt"]) for s in states.values())
    phases = {
        "sandbox_and_images_s": _seconds(created, _time(loader["startedAt"])),
        "loader_s": _seconds(_time(loader["startedAt"]), _time(loader["finishedAt"])),
        "server_ready_s": _seconds(_time(server_state["startedAt"]), _time(worker["startedAt"])),
        "first_record_s": _seconds(_time(worker["startedAt"]), _time(first_frame[:26] + "+00:00")),
        "records_s": _seconds(_time(first_frame[:26] + "+00:00"), _time(worker["finishedAt"])),
        "pod_succeeded_s": _seconds(_time(worker["finishedAt"]), ended),
        "total_s": _seconds(created, ended),
    }
    for kind, name in (("pods", names["pod"]), ("secrets", names["input"]), ("secrets", names["key"])):
        admin.delete(f"{path}/{kind}/{name}")
    return {"records": records, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="OCI archives (build-images.sh --oci-dir)")
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks/results/real-node-startup-cpu-2core.json"
    )
    args = parser.parse_args()
    archives = sorted(args.images.glob("*.tar"))
    with tempfile.TemporaryDirectory() as state:
        cluster = DevCluster(Path(state), node=NodeOptions(image_archives=archives))
        started = time.monotonic()
        cluster.up()
        up_seconds = round(time.monotonic() - started, 1)
        try:
            with cluster.admin() as admin:
                loaded = admin.get(f"/api/v1/nodes/{REAL_NODE_NAME}")["status"]["images"]
                names = [name for image in loaded for name in image.get("names", [])]
                images = {
                    kind: next(n for n in names if f"/llm-etl/{kind}:" in n)
                    for kind in ("worker", "llama-server")
                }
                pods = [one_pod(admin, index, images, args.records) for index in range(args.pods)]
        finally:
            started = time.monotonic()
            cluster.down()
            down_seconds = round(time.monotonic() - started, 1)
    report = {"node_up_s": up_seconds, "node_down_s": down_seconds, "pods": pods}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
