"""The pod's images, built here with no registry (``scripts/build-images.sh --local-base``: bases from
Debian's packages, the worker from ``docker/worker.Dockerfile`` itself, llama.cpp's server with the
``llama-server`` this project builds), run by containerd and runc as a kubelet runs them: the server in its
image on a read-only root, the model mounted read-only; the model loader's check and the worker in the worker
image, as uid 65532 on a read-only root with an emptyDir-like /tmp; the worker's sealed frames read back by
the extraction."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_etl_provider.backends.llama_server import MODEL_FILE, MODEL_SHA256, bundled_model, free_port
from llm_etl_provider.contract.layout import MODELS_DIR
from llm_etl_provider.contract.pod_commands import load_model_args, load_model_command
from llm_etl_provider.llama_cpp import llama_server_args
from tests.images import build_images
from tests.integration.containerd import Containerd, running_containerd

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The images as OCI archives, by name (worker, llama-server, pause)."""
    archives = tmp_path_factory.mktemp("images")
    printed = build_images(archives)
    assert [name for name, _, _ in printed] == ["worker", "llama-server", "pause"]
    assert all(digest.startswith("sha256:") and len(digest) == 71 for _, _, digest in printed)  # by digest
    return {name: archives / f"{name}.tar" for name, _, _ in printed}


@pytest.fixture(scope="module")
def node(tmp_path_factory, images) -> Iterator[Containerd]:
    with running_containerd(tmp_path_factory.mktemp("containerd")) as containerd:
        for archive in images.values():
            containerd.load(archive)
        yield containerd


def test_the_worker_image_enriches_beside_the_server_image_as_65532_on_a_read_only_root(tmp_path, node):
    models = bundled_model().parent
    port = free_port()
    served = llama_server_args(f"{MODELS_DIR}/{MODEL_FILE}", "smollm2", port=port, slots=2)
    server = node.start(
        "llama-server", "localhost/llm-etl/llama-server", read_only_mounts={MODELS_DIR: models},
        args=["/app/llama-server", *served],
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                break
        except httpx.HTTPError:
            pass
        assert node.running(server), node.logs(server)
        assert time.monotonic() < deadline, "the server in its image never answered"
        time.sleep(0.5)

    # the pod's model loader, in the worker image: it checks the model it is given, read-only
    loader = node.run(
        "loader", "localhost/llm-etl/worker",
        [*load_model_command(f"{MODELS_DIR}/{MODEL_FILE}"), *load_model_args(sha256=MODEL_SHA256)],
        read_only_mounts={MODELS_DIR: models},
    )  # fmt: skip
    assert loader.returncode == 0, loader.stderr
    wrong = node.run(
        "loader-wrong", "localhost/llm-etl/worker",
        [*load_model_command(f"{MODELS_DIR}/{MODEL_FILE}"), *load_model_args(sha256="0" * 64)],
        read_only_mounts={MODELS_DIR: models},
    )  # fmt: skip
    assert wrong.returncode != 0  # a wrong checksum is refused, in the image too

    shard = tmp_path / "in"
    shard.mkdir()
    lines = SAMPLE.read_text().splitlines(keepends=True)[:3]
    (shard / "input.jsonl").write_text("".join(lines))
    key = tmp_path / "key"
    key.mkdir()
    subprocess.run(
        [str(REPO / ".venv/bin/llm-etl"), "new-key", str(key / "key")], check=True, capture_output=True
    )
    for path in (shard, key, shard / "input.jsonl", key / "key"):
        path.chmod(
            0o755 if path.is_dir() else 0o644
        )  # as a Secret volume's files: readable by the pod's user
    probes = (
        "id -u >&2; (touch /probe) 2>/dev/null && echo writable-root >&2 || echo read-only-root >&2; "
        "python3 -c 'import airflow' 2>/dev/null && echo airflow >&2 || echo no-airflow >&2; "
    )
    worker = node.run(
        "worker", "localhost/llm-etl/worker",
        ["sh", "-c", probes + 'exec llm-etl-worker "$@"', "worker", "--task", "sentiment", "--template",
         "{review}", "--input", "/in/input.jsonl", "--output", "log", "--key-file", "/key/key", "--run-id",
         "images-run", "--llm-url", f"http://127.0.0.1:{port}", "--api", "openai", "--model", "smollm2"],
        read_only_mounts={"/in": shard, "/key": key},
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert worker.stderr.splitlines()[:3] == ["65532", "read-only-root", "no-airflow"]
    frames = tmp_path / "stdout.log"
    frames.write_text(worker.stdout)
    out = tmp_path / "out"
    extracted = subprocess.run(
        [str(REPO / ".venv/bin/llm-etl"), "extract", "--source", str(frames), "--key-file", str(key / "key"),
         "--output", str(out), "--run-id", "images-run", "--shard", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert extracted.returncode == 0, extracted.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [json.loads(line)["id"] for line in lines]
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
