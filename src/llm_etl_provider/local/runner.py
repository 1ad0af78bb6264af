"""Local execution mode: run an enrichment pod's three parts as local processes, with the pod's own arguments.

The model loader checks the model, llama.cpp's server serves it on 127.0.0.1, and the worker runs with the
argument list the pod's ``base`` container would get, its Secret paths and server URL swapped for local ones.
Given a server from an ``llm_etl`` connection instead (e.g. Ollama beside Airflow in docker-compose), the
worker talks to that server and no model is loaded.
The worker's stdout (the sealed frames) becomes the shard's ``container.log``, which ExtractResultsOperator
reads in local mode exactly as it reads a pod log in Kubernetes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_etl_provider.local.llama_server import MODEL_SHA256, LlamaServer, bundled_model
from llm_etl_provider.worker.cli import API_KEY_ENV
from llm_etl_provider.worker.errors import EXIT_DEAD_LETTER_THRESHOLD, EXIT_SERVER_UNAVAILABLE, EXIT_STOPPED

if TYPE_CHECKING:
    from llm_etl_provider.hooks.llm_server import LLMServer


class LocalRunError(RuntimeError):
    """A local step of the shard failed."""


_EXIT_MEANINGS = {
    2: "bad configuration or unusable input",
    EXIT_SERVER_UNAVAILABLE: "the LLM server was unavailable",
    EXIT_DEAD_LETTER_THRESHOLD: "more dead letters than the threshold allows",
    EXIT_STOPPED: "stopped by SIGTERM; a retry resumes from its checkpoint",
}


def _with(args: list[str], replacements: dict[str, str]) -> list[str]:
    """Replace the values of flags in an argument list; add those it lacks."""
    result = list(args)
    for flag, value in replacements.items():
        if flag in result:
            result[result.index(flag) + 1] = value
        else:
            result += [flag, value]
    return result


@contextlib.contextmanager
def _bundled_server(
    pod: dict[str, Any],
    shard_dir: Path,
    model_file: Path | None,
    parallel: int,
    threads: int | None,
    log: Callable[[str], None],
) -> Iterator[list[str]]:
    """Load (check) the model and serve it with llama.cpp as the pod's sidecar would; yield worker flags."""
    model = model_file or bundled_model()
    check = ["--sha256", MODEL_SHA256] if model_file is None else []
    load = ["load-model", "--verify", "--dest", str(model), *check]
    loader = subprocess.run(
        [sys.executable, "-m", "llm_etl_provider.cli", *load],
        capture_output=True,
        text=True,
        check=False,
    )
    if loader.returncode != 0:
        raise LocalRunError(f"{shard_dir.name}: the model loader failed: {loader.stderr.strip()[-500:]}")
    worker = pod["spec"]["containers"][0]
    model_name = worker["args"][worker["args"].index("--model") + 1]
    with LlamaServer(
        parallel=parallel, threads=threads, model_path=model, model_name=model_name,
        log_path=shard_dir / "llm-server.log",
    ) as server:  # fmt: skip
        log(f"{shard_dir.name}: llama-server ready at {server.url} with {model.name}")
        yield ["--llm-url", server.url, "--api", "openai"]


def run_shard_locally(
    pod: dict[str, Any],
    *,
    staging: Path,
    shard: int,
    model_file: Path | None = None,
    parallel: int = 4,
    threads: int | None = None,
    server: LLMServer | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one shard as the pod would; return a small summary. Raise :class:`LocalRunError` on failure.

    ``server``: enrich through this server instead of loading the model and starting llama.cpp's.
    """
    shard_dir = staging / f"shard-{shard}"
    inputs = sorted(shard_dir.glob("input.*.gz"))
    if len(inputs) != 1:
        raise LocalRunError(f"shard {shard}: expected one staged input in {shard_dir}, found {len(inputs)}")
    environment = dict(os.environ)
    serving: contextlib.AbstractContextManager[list[str]]
    if server is not None:
        log(f"shard {shard}: enriching through the {server.api} server at {server.base_url}")
        serving = contextlib.nullcontext(server.worker_args())
        if server.api_key:
            environment[API_KEY_ENV] = server.api_key
    else:
        serving = _bundled_server(pod, shard_dir, model_file, parallel, threads, log)
    with serving as server_flags:
        flags = dict(zip(server_flags[::2], server_flags[1::2], strict=True))
        args = _with(
            pod["spec"]["containers"][0]["args"],
            {
                "--input": str(inputs[0]),
                "--key-file": str(staging / "key"),
                "--checkpoint": str(shard_dir / "checkpoint.json"),
                **flags,
            },
        )
        with (
            (shard_dir / "container.log").open("wb") as container_log,
            subprocess.Popen(
                [sys.executable, "-m", "llm_etl_provider.worker.cli", *args],
                stdout=container_log,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            ) as process,
        ):
            assert process.stderr is not None
            for line in process.stderr:  # progress and summary lines: counts only
                log(f"shard {shard}: {line.rstrip()}")
            code = process.wait()
    if code != 0:
        meaning = _EXIT_MEANINGS.get(code, "an unexpected failure")
        raise LocalRunError(f"shard {shard}: the worker exited with code {code} ({meaning})")
    return {"shard": shard, "exit_code": code}
