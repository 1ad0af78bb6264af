"""llama.cpp's ``llama-server`` as the project runs it: the enrichment pod's sidecar (the ``llamacpp``
backend, :mod:`llm_etl_provider.pod.builder`) and local mode's server
(:mod:`llm_etl_provider.backends.llama_server`) take their arguments and defaults from here. It imports
nothing, so that the GPU benchmark, which has only the worker image's packages, runs the server as they do."""

from __future__ import annotations

# requests a server without a GPU serves at once (a pod's, whatever its backend; local mode's)
CPU_PARALLEL = 4
CTX_PER_SLOT = 2048  # context per slot: a prompt of a few hundred tokens, an answer of up to 384


def llama_server_args(
    model_file: str, model_name: str, *, port: int, slots: int, ctx_per_slot: int = CTX_PER_SLOT
) -> list[str]:
    """The arguments that serve ``model_file`` as ``model_name`` on 127.0.0.1:``port`` only (the server sees
    every prompt), ``slots`` requests at once with ``ctx_per_slot`` tokens of context each; the caller adds
    what its machine needs (GPU layers, threads)."""
    return [
        "--model", model_file, "--alias", model_name, "--host", "127.0.0.1", "--port", str(port),
        "--parallel", str(slots), "--ctx-size", str(slots * ctx_per_slot), "--no-webui",
    ]  # fmt: skip
