"""Local execution mode: run an enrichment pod's three parts as local processes, with the pod's own arguments.

The model loader checks the model, llama.cpp's server serves it on 127.0.0.1, and the worker runs with the
argument list the pod's ``base`` container would get, its Secret paths and server URL swapped for local ones.
The worker's stdout (the sealed frames) becomes the shard's ``container.log``, which ExtractResultsOperator
reads in local mode exactly as it reads a pod log in Kubernetes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_etl_provider.local.llama_server import MODEL_SHA256, LlamaServer, bundled_model
from llm_etl_provider.worker.errors import EXIT_DEAD_LETTER_THRESHOLD, EXIT_SERVER_UNAVAILABLE


class LocalRunError(RuntimeError):
    """A local step of the shard failed."""


_EXIT_MEANINGS = {
    2: "bad configuration or unusable input",
    EXIT_SERVER_UNAVAILABLE: "the LLM server was unavailable",
    EXIT_DEAD_LETTER_THRESHOLD: "more dead letters than the threshold allows",
}


def _with(args: list[str], replacements: dict[str, str]) -> list[str]:
    """Replace the values of flags in an argument list (every flag named must be present)."""
    result = list(args)
    for flag, value in replacements.items():
        try:
            result[result.index(flag) + 1] = value
        except ValueError:
            raise LocalRunError(f"the pod's worker arguments lack {flag}") from None
    return result


def run_shard_locally(
    pod: dict[str, Any],
    *,
    staging: Path,
    shard: int,
    model_file: Path | None = None,
    parallel: int = 4,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one shard as the pod would; return a small summary. Raise :class:`LocalRunError` on failure."""
    shard_dir = staging / f"shard-{shard}"
    inputs = sorted(shard_dir.glob("input.*.gz"))
    if len(inputs) != 1:
        raise LocalRunError(f"shard {shard}: expected one staged input in {shard_dir}, found {len(inputs)}")
    model = model_file or bundled_model()
    check = ["--sha256", MODEL_SHA256] if model_file is None else []
    loader = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_etl_provider.cli",
            "load-model",
            "--verify",
            "--dest",
            str(model),
            *check,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if loader.returncode != 0:
        raise LocalRunError(f"shard {shard}: the model loader failed: {loader.stderr.strip()[-500:]}")
    worker = pod["spec"]["containers"][0]
    model_name = worker["args"][worker["args"].index("--model") + 1]
    with LlamaServer(
        parallel=parallel, threads=threads, model_path=model, model_name=model_name,
        log_path=shard_dir / "llm-server.log",
    ) as server:  # fmt: skip
        log(f"shard {shard}: llama-server ready at {server.url} with {model.name}")
        args = _with(
            worker["args"],
            {
                "--input": str(inputs[0]),
                "--key-file": str(staging / "key"),
                "--checkpoint": str(shard_dir / "checkpoint.json"),
                "--llm-url": server.url,
                "--api": "openai",
            },
        )
        with (
            (shard_dir / "container.log").open("wb") as container_log,
            subprocess.Popen(
                [sys.executable, "-m", "llm_etl_provider.worker.cli", *args],
                stdout=container_log,
                stderr=subprocess.PIPE,
                text=True,
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
