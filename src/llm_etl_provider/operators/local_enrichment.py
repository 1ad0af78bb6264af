"""LocalEnrichmentOperator: one shard's pod as local processes, for a laptop, a demo or CI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from llm_etl_provider.backends.local import LocalBackend, LocalServing
from llm_etl_provider.backends.urls import DEFAULT_URL_RENEW_SECONDS
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import WORKER_SETTINGS, is_unset
from llm_etl_provider.operators.shard_run import (
    ShardRun,
    optional_int,
    renewing_urls,
    take_worker_settings,
    with_worker_settings,
)
from llm_etl_provider.pod.builder import ServerSpec

if TYPE_CHECKING:
    from airflow.sdk import Context


class LocalEnrichmentOperator(BaseOperator):
    """Enrich one shard as its pod would, with local processes: the model loader checks the model,
    llama.cpp's server serves it on 127.0.0.1, and the worker runs with the pod's own invocation, its paths
    those of the shard's folder under ``local_dir``; its stdout (the sealed frames) is the shard's log, which
    ExtractResultsOperator reads as it reads a pod's. Map it over the shards from StageInputOperator with
    ``.partial(...).expand(shard=...)``.

    The worker's settings are keyword arguments, as for
    :class:`~llm_etl_provider.operators.enrichment.LLMEnrichmentOperator`.

    :param shard: the shard descriptor from StageInputOperator (templated)
    :param model: the name the server serves the model under (templated); unset (None): the connection's
        model, or the bundled model's name
    :param local_dir: the staging folder (templated)
    :param scope: the pipeline's task group in the DAG (set by ``llm_enrichment_task_group``)
    :param parallel: requests the local server serves at once (templated; default: a CPU server's,
        :data:`~llm_etl_provider.llama_cpp.CPU_PARALLEL`)
    :param local_model_file: the GGUF file (default: the bundled SmolLM2)
    :param llm_conn_id: enrich through the server of this ``llm_etl`` connection (e.g. an Ollama beside
        Airflow) instead of loading the model and starting llama.cpp's server
    :param url_renew_seconds: the object transport: how often the shard's URLs are signed afresh while the
        worker runs (default 5 minutes)
    """

    template_fields: Sequence[str] = ("shard", "model", "parallel", "local_dir", *WORKER_SETTINGS)

    def __init__(
        self,
        *,
        shard: dict[str, Any] | str,
        model: str,
        local_dir: str | None = None,
        scope: str | None = None,
        parallel: int | str | None = None,
        local_model_file: str | None = None,
        llm_conn_id: str | None = None,
        url_renew_seconds: int = DEFAULT_URL_RENEW_SECONDS,
        **kwargs: Any,
    ) -> None:
        settings = take_worker_settings(kwargs)
        super().__init__(**kwargs)
        for name, value in settings.items():
            setattr(self, name, value)
        self.shard = shard
        self.model = model
        self.local_dir = local_dir
        self.scope = scope
        self.parallel = parallel
        self.local_model_file = local_model_file
        self.llm_conn_id = llm_conn_id
        self.url_renew_seconds = url_renew_seconds

    __init__.__signature__ = with_worker_settings(__init__)  # type: ignore[attr-defined]

    def execute(self, context: Context) -> Any:
        scope = layout.run_scope(self.dag_id, self.scope)
        run = ShardRun.of(self.shard, scope=scope, dag_id=self.dag_id, context=context)
        backend = LocalBackend(
            self.local_dir, dag_id=self.dag_id, scope=scope, run_id=run.run_id, log=self.log,
            plan=run.shard.plan,
        )  # fmt: skip
        given = None if is_unset(self.model) else str(self.model)
        remote = None
        if self.llm_conn_id:
            from llm_etl_provider.hooks.llm_server import LLMServerHook

            remote = LLMServerHook(self.llm_conn_id).get_server(model=given)
            model = remote.model
        else:
            from llm_etl_provider.backends.llama_server import MODEL_NAME

            model = given or MODEL_NAME  # the name the bundled (or given) model is served under
        # the pod's invocation for llama.cpp's server on the CPU; the serving swaps in its address
        server = ServerSpec(backend="llamacpp", parallel=optional_int(self.parallel, "parallel"), gpus=0)
        serving = LocalServing(
            model_file=Path(self.local_model_file) if self.local_model_file else None,
            parallel=server.slots,
            server=remote,
        )
        invocation = run.invocation({n: getattr(self, n) for n in WORKER_SETTINGS}, server, model)
        renewal = run.url_renewal(self.url_renew_seconds, layout.DEFAULT_POD_TIME_LIMIT_SECONDS)
        with renewing_urls(renewal, backend, self.log):
            return backend.enrich(invocation, run.shard, serving)
