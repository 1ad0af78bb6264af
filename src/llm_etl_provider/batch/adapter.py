"""The ``llm-etl`` batch adapter of Airflow's ``common.ai`` provider: ``@task.llm_batch`` on your own model.

``@task.llm_batch(model_id="llm-etl:<model>", llm_conn_id=<an llm_etl connection>)`` (or
``LLMBatchOperator``) hands its prompts to this adapter, which common.ai finds through the entry point
``airflow.providers.common.ai.batch_adapters`` (this package's ``pyproject.toml``): the batch runs as the
provider's own job (:mod:`~llm_etl_provider.batch.job`): the worker beside the model's server, each answer
constrained and validated by the task's JSON schema with the server's constrained decoding, the results
read back verified through the sealed transport; nothing of a prompt reaches a log, an XCom or an error.

Where it runs is the deployment's ``[llm_etl]``: Kubernetes execution (:mod:`~llm_etl_provider.batch.
kubernetes`) runs one pod per shard in ``namespace``, each serving the model itself (``backend``,
``model_source`` ...: the connection's host is not used); local execution (``execution_mode = local``) runs
it as local processes under ``local_dir``, with the connection's server (its host and password, which is all
common.ai hands an adapter) or, with no host, the bundled model served by llama.cpp's server.

Needs the ``common-ai`` extra (``apache-airflow-providers-common-ai``); the provider works without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException

try:
    from airflow.providers.common.ai.batch.base import (
        BatchAdapter,
        BatchRequest,
        BatchState,
        ExtractedOutput,
        RawResultItem,
        SubmitResult,
    )
    from airflow.providers.common.ai.exceptions import (
        LLMBatchInputError,
        LLMBatchLimitExceededError,
        LLMBatchModelMismatchError,
    )
except ImportError as missing:  # the common-ai extra is not installed
    raise AirflowOptionalProviderFeatureException(
        f"the llm-etl batch adapter needs apache-airflow-providers-common-ai: pip install "
        f"'llm-etl-provider[common-ai]' ({missing})"
    ) from missing
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from llm_etl_provider.backends import KUBERNETES_MODE
from llm_etl_provider.batch.job import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    BatchIdentity,
    BatchJobs,
    BatchResult,
    BatchServer,
    BatchSettings,
    LocalBatchJobs,
)
from llm_etl_provider.config import LLMEtlConfig
from llm_etl_provider.contract.codes import DeadLetterReason
from llm_etl_provider.contract.invocation import DEFAULT_MAX_RECORD_BYTES
from llm_etl_provider.exceptions import PodSpecError, WorkerImageUnsetError
from llm_etl_provider.hooks.llm_server import LLMServerHook

if TYPE_CHECKING:
    from airflow.providers.common.ai.batch.output_schema import OutputSpec

# common.ai's batch-level settings that a request may repeat but not change: the worker asks every prompt
# of a batch alike
_BATCH_LEVEL = ("system_prompt", "max_tokens")
_SAMPLING_PARAMS = ("temperature",)  # request_params the worker takes; others are refused, not ignored
_STATES = {IN_PROGRESS: "in_progress", COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled"}


class LLMEtlBatchAdapter(BatchAdapter):
    """common.ai's batch interface over the provider's job (``model_id="llm-etl:<model>"``).

    :param api_key: the ``llm_etl`` connection's password: the server's bearer key
    :param base_url: the connection's host: the server's URL; none: the bundled model (local execution)
    :param client: the batches' home (:class:`~llm_etl_provider.batch.job.LocalBatchJobs` or
        :class:`~llm_etl_provider.batch.kubernetes.KubernetesBatchJobs`); default: the deployment's, by its
        ``[llm_etl] execution_mode``
    """

    name: ClassVar[str] = "llm-etl"
    conn_types: ClassVar[frozenset[str]] = frozenset({LLMServerHook.conn_type})
    max_requests: ClassVar[int] = 1_000_000
    max_payload_bytes: ClassVar[int] = 512 * 1024 * 1024  # the stage's max_staged_bytes
    allows_per_request_model: ClassVar[bool] = False  # one model served per batch

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None, client: Any | None = None):
        super().__init__(api_key=api_key, base_url=base_url, client=client)
        self.config = LLMEtlConfig.from_airflow()
        self.api_key = api_key
        if base_url and not base_url.startswith(("http://", "https://")):
            raise LLMBatchInputError(
                "the llm_etl connection's host must be the server's whole URL, http(s)://host:port, "
                f"not {base_url!r}"
            )
        self.server = BatchServer(base_url=base_url or None)
        self.jobs: BatchJobs = client or self._jobs()

    def _jobs(self) -> BatchJobs:
        if self.config.execution_mode == KUBERNETES_MODE:
            from llm_etl_provider.batch.kubernetes import KubernetesBatchJobs

            return KubernetesBatchJobs(self.config)
        return LocalBatchJobs(self.config.local_dir)

    def validate_requests(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        output_spec: OutputSpec,
        idempotency_key: str,
        **kwargs: Any,
    ) -> None:
        self.check_custom_id_length(idempotency_key, len(requests))
        if len(requests) > self.max_requests:
            raise LLMBatchLimitExceededError(
                f"{len(requests)} requests: an llm-etl batch holds at most {self.max_requests}; "
                "split them with .expand()"
            )
        for index, request in enumerate(requests):
            chosen = self.resolve_request_model(
                request.get("model"), default_bare_model=model, request_index=index
            )
            if chosen != model:
                raise LLMBatchModelMismatchError(
                    f"request {index} asks for model {chosen!r}, the batch for {model!r}: an llm-etl batch "
                    "serves one model"
                )
            for setting in _BATCH_LEVEL:
                given = request.get(setting)
                if given is not None and given != kwargs.get(setting):
                    raise LLMBatchInputError(
                        f"request {index} sets its own {setting}: an llm-etl batch asks every prompt alike; "
                        "give it to the batch, or one batch per value with .expand()"
                    )
            if request.get("params"):
                raise LLMBatchInputError(
                    f"request {index} sets its own params: give request_params to the batch"
                )
        self._sampling(kwargs.get("request_params"))
        if output_spec.is_structured:
            try:
                Draft202012Validator.check_schema(output_spec.json_schema)
            except SchemaError as exc:
                raise LLMBatchInputError(
                    f"the output type's JSON schema is not valid: {exc.message}"
                ) from None
        if check := getattr(self.jobs, "check", None):  # Kubernetes: the pods the deployment would make
            try:
                check(self._settings(model, output_spec, kwargs))
            except (PodSpecError, WorkerImageUnsetError) as exc:
                raise LLMBatchInputError(f"[llm_etl] cannot run an llm-etl batch's pods: {exc}") from None
        size = 0
        for index, request in enumerate(requests):
            try:
                line = json.dumps(
                    {"id": f"{idempotency_key}-{index}", "prompt": request["prompt"]}, ensure_ascii=False
                )
                record = len(line.encode()) + 1
            except UnicodeEncodeError:
                raise LLMBatchInputError(f"request {index}: its prompt is not valid Unicode text") from None
            if record > DEFAULT_MAX_RECORD_BYTES:
                raise LLMBatchLimitExceededError(
                    f"request {index}: its prompt takes {record} bytes, over the {DEFAULT_MAX_RECORD_BYTES} "
                    "an llm-etl batch's worker reads in one record"
                )
            size += record
        if size > self.max_payload_bytes:
            raise LLMBatchLimitExceededError(
                f"the prompts take about {size} bytes: an llm-etl batch holds at most "
                f"{self.max_payload_bytes}; split them with .expand()"
            )

    def _sampling(self, request_params: Mapping[str, Any] | None) -> float | None:
        unknown = sorted(set(request_params or {}) - set(_SAMPLING_PARAMS))
        if unknown:
            raise LLMBatchInputError(
                f"request_params {unknown} are not settings of the llm-etl worker: it takes "
                f"{list(_SAMPLING_PARAMS)}"
            )
        temperature = (request_params or {}).get("temperature")
        return None if temperature is None else float(temperature)

    def _settings(self, model: str, output_spec: OutputSpec, kwargs: Mapping[str, Any]) -> BatchSettings:
        return BatchSettings(
            model=model,
            system_prompt=kwargs.get("system_prompt") or "",
            max_tokens=int(kwargs.get("max_tokens") or 1024),
            schema=dict(output_spec.json_schema) if output_spec.is_structured else None,
            temperature=self._sampling(kwargs.get("request_params")),
        )

    def submit(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        idempotency_key: str,
        input_fingerprint: str,
        output_spec: OutputSpec,
        **kwargs: Any,
    ) -> SubmitResult:
        self.validate_requests(
            requests, model=model, output_spec=output_spec, idempotency_key=idempotency_key, **kwargs
        )
        settings = self._settings(model, output_spec, kwargs)
        prompts = [
            (f"{idempotency_key}-{index}", request["prompt"]) for index, request in enumerate(requests)
        ]
        batch_id = self.jobs.submit(
            prompts, settings, BatchIdentity(idempotency_key, input_fingerprint), self.server,
            owner=_dag_run(), api_key=self.api_key,
        )  # fmt: skip
        return SubmitResult(batch_id=batch_id, provider_input_ref=None)

    def get_batch(self, batch_id: str) -> BatchState:
        state = self.jobs.state(batch_id)
        counts = None
        if state.counts is not None:
            counts = {"succeeded": 0, "errored": 0, "expired": 0, "cancelled": 0, **state.counts}
        return BatchState(status=_STATES[state.status], counts=counts, error_message=state.error)  # type: ignore[arg-type]

    def cancel_batch(self, batch_id: str) -> None:
        self.jobs.cancel(batch_id)

    def iter_results(self, batch_id: str) -> Iterator[RawResultItem]:
        return map(_raw_item, self.jobs.results(batch_id))

    def build_output_directive(self, spec: OutputSpec) -> dict[str, Any]:
        """The worker's ``schema``: the server constrains each answer to it, the worker validates it."""
        return {"schema": spec.json_schema} if spec.is_structured else {}

    def extract_output(self, raw: RawResultItem, spec: OutputSpec) -> ExtractedOutput:
        if raw.raw is None:
            return ExtractedOutput(kind="absent")
        if spec.is_structured:
            return ExtractedOutput(kind="json_value", value=raw.raw)
        return ExtractedOutput(kind="text", text=raw.raw.get("text"))

    def find_orphaned_batch(
        self, idempotency_key: str, input_fingerprint: str, not_before: str
    ) -> str | None:
        since = datetime.fromisoformat(not_before).timestamp() if not_before else 0.0
        return self.jobs.find(idempotency_key, input_fingerprint, since)


def _raw_item(result: BatchResult) -> RawResultItem:
    index = int(result.custom_id.rsplit("-", 1)[1])
    if result.enrichment is not None:
        return RawResultItem(
            custom_id=result.custom_id, index=index, provider_status="success", model=result.model,
            usage=result.usage, finish_reason=result.finish_reason, error=None, raw=result.enrichment,
        )  # fmt: skip
    if result.reason == DeadLetterReason.INVALID_OUTPUT:
        # every answer failed the schema: common.ai's own check then rows it as invalid_output
        return RawResultItem(
            custom_id=result.custom_id, index=index, provider_status="success", model=None, usage=None,
            finish_reason=None, error=None, raw=None,
        )  # fmt: skip
    return RawResultItem(
        custom_id=result.custom_id, index=index, provider_status="errored", model=None, usage=None,
        finish_reason=None, raw=None,
        error={
            "type": result.reason, "message": result.detail, "provider_code": result.reason,
            "stage": "provider",
        },
    )  # fmt: skip


def _dag_run() -> tuple[str, str] | None:
    """The submitting task's DAG run, whose end lets the sweeper remove the batch's files."""
    from airflow.sdk import get_current_context

    try:
        context = get_current_context()
    except RuntimeError:  # not in a task (a test, a tool): the batch keeps its deadline
        return None
    return str(context["dag"].dag_id), str(context["run_id"])
