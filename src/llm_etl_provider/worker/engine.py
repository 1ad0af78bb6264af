"""The enrichment engine: read, prompt, call the LLM concurrently, validate, and write in input order.

Records are dispatched to the server concurrently but written in input order, so that a checkpoint is
simply "the first N records are written": a restarted worker cuts its outputs back to the checkpoint and
redoes at most one checkpoint interval, writing nothing twice. Memory stays flat: at most a few records per
request in flight are held (:class:`~llm_etl_provider.worker.concurrency.InFlightLimit`).

The engine's settings are the worker's flags: it reads them from the
:class:`~llm_etl_provider.contract.invocation.WorkerInvocation` it is given, where each is declared once with
its default and range.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from llm_etl_provider.contract.codes import DeadLetterReason
from llm_etl_provider.contract.invocation import (
    ALL_FIELDS,
    CARRIED_FIELD,
    REQUESTS_PER_SLOT,
    WorkerInvocation,
)
from llm_etl_provider.contract.provenance import PROVENANCE, provenance_id, provenance_record
from llm_etl_provider.contract.reuse import (
    CONTENT_SHA256,
    RECORD_SHA256,
    REUSED,
    content_digest,
    content_key,
    record_digest,
)
from llm_etl_provider.contract.summary import (
    LABEL_FIELD,
    OUTPUT_LABELS,
    OUTPUT_LABELS_COMPLETE,
    RESULT_LABEL,
    label_text,
    output_labels,
)
from llm_etl_provider.formats.digests import sha256_file
from llm_etl_provider.formats.records import InputRecord, RecordReader
from llm_etl_provider.worker.checkpoint import Checkpoint, CheckpointState
from llm_etl_provider.worker.clients import ChatRequest, Completion, LLMClient
from llm_etl_provider.worker.concurrency import (
    MAX_CONCURRENCY,
    PROBE_START,
    ConcurrencyProbe,
    InFlightLimit,
)
from llm_etl_provider.worker.exceptions import (
    DeadLetterThresholdError,
    InvalidOutputError,
    LLMRejectedError,
    MissingFieldError,
    RecordError,
    ServerUnavailableError,
    TransientLLMError,
)
from llm_etl_provider.worker.retry import RetryPolicy
from llm_etl_provider.worker.sinks import OutputSink
from llm_etl_provider.worker.stats import RunStats
from llm_etl_provider.worker.tasks import TaskSpec


def worker_version() -> str:
    """The worker's package version (installed in its image, or beside Airflow)."""
    try:
        return importlib.metadata.version("llm-etl-provider")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Reasons that mean the server itself may be gone, rather than this one record being a problem.
_SERVER_GONE_REASONS = frozenset({DeadLetterReason.CONNECT_ERROR, DeadLetterReason.CONNECTION_ERROR})
# The sampling temperature of a retry after an invalid answer: a deterministic retry would repeat the answer.
RETRY_TEMPERATURE = 0.7


@dataclass(slots=True)
class Outcome:
    """What became of one record: a result line or a dead-letter line."""

    line: dict[str, Any]
    reason: DeadLetterReason | None = None
    latency: float | None = None
    completion: Completion | None = None
    retries: int = 0


class Engine:
    """Enrich every record of a reader through an LLM client into a sink.

    :param task: the enrichment task
    :param client: the LLM client
    :param reader: the input records
    :param sink: where results and dead letters go
    :param invocation: the worker's flags: the engine reads its concurrency, attempts, temperature, checkpoint
        interval, dead-letter threshold, readiness wait and progress interval there
    :param checkpoint: where to save progress; None for no resumability
    :param log: receives progress and summary lines (counts only)
    :param reused: earlier results by input line, each published in place of a request where its
        ``meta.content_sha256`` is the record's content digest now (:mod:`~llm_etl_provider.contract.reuse`)
    :param input_sha256: the digest of what the input was read from, where that is not the reader's file
        (a Parquet range, turned into JSON lines once checked); None: the reader's file's
    """

    def __init__(
        self,
        task: TaskSpec,
        client: LLMClient,
        reader: RecordReader,
        sink: OutputSink,
        invocation: WorkerInvocation,
        *,
        checkpoint: Checkpoint | None = None,
        log: Callable[[str], None] = print,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        reused: dict[int, dict[str, Any]] | None = None,
        input_sha256: str | None = None,
    ) -> None:
        self.task = task
        self.client = client
        self.reader = reader
        self.sink = sink
        self.invocation = invocation
        self.retry = RetryPolicy(max_attempts=invocation.max_attempts)
        self.checkpoint = checkpoint
        self.log = log
        self.sleep = sleep
        self.stats = RunStats()
        self.limit = InFlightLimit(invocation.concurrency or PROBE_START)
        self.probe: ConcurrencyProbe | None = None
        self.concurrency_source = "flag"
        self.summary: dict[str, Any] | None = None
        self.provenance: dict[str, Any] = {}
        self.provenance_id: str | None = None
        self.content_key = ""
        self.reused = reused or {}  # earlier results by input line (the stage's reused file)
        self.input_sha256 = input_sha256

    async def run(self) -> dict[str, Any]:
        """Process every record; return the summary, or raise a :class:`WorkerError`."""
        await self.client.wait_ready(self.invocation.ready_timeout)
        if self.invocation.concurrency is None:
            if slots := await self.client.parallel_slots():
                self.limit.set_limit(min(REQUESTS_PER_SLOT * slots, MAX_CONCURRENCY))
                self.concurrency_source = "server slots"
            else:
                self.probe = ConcurrencyProbe(self.limit)
                self.concurrency_source = "probe"
        self.provenance = provenance_record(
            task=self.task.name, model=self.client.model, model_digest=self.invocation.model_digest,
            api=self.client.api, server_version=await self.client.server_version(),
            prompts=[self.task.system_prompt, self.task.template.key], schema=self.task.answer_schema,
            sampling={
                "temperature": self.invocation.temperature, "retry_temperature": RETRY_TEMPERATURE,
                "max_tokens": self.task.max_tokens, "max_attempts": self.invocation.max_attempts,
            },
            worker_version=worker_version(),
        )  # fmt: skip
        self.provenance_id = provenance_id(self.provenance)
        self.content_key = content_key(self.provenance)  # each record's content digest builds on it
        state = self.checkpoint.load() if self.checkpoint is not None else None
        self.stats.total = await asyncio.to_thread(self.reader.count)  # the heartbeat beats meanwhile
        # the trailer carries what was read: extraction refuses a stream computed over another shard's input
        input_sha256 = self.input_sha256 or await asyncio.to_thread(sha256_file, self.reader.path)
        records_done = 0
        if self.checkpoint is not None and state is not None:
            records_done = state.records_done
            self.stats.restore(state.counts, records_done)
            self.log(f"resuming after {records_done} records from checkpoint {self.checkpoint.path}")
        self.log(
            f"start task={self.task.name} model={self.client.model} api={self.client.api} "
            f"concurrency={self.limit.limit} ({self.concurrency_source}) records={self.stats.total}"
        )
        self.sink.open(state.sink if state else None)
        ticker = asyncio.create_task(self._tick())
        self.stats.sample()  # the series starts where the records do (after the server's start, the count)
        try:
            try:
                await self._pipeline(itertools.islice(self.reader, records_done, None))
            except asyncio.CancelledError:
                # Stopped (SIGTERM: the pod deleted, its node drained): checkpoint what is written, so that a
                # restart redoes only the records that were in flight.
                self._save_checkpoint()
                self.log(
                    f"stopped after {self.stats.done} records" + (", checkpointed" if self.checkpoint else "")
                )
                raise
            except Exception:
                # an unexpected failure ends the run at once; what is written stays written
                with contextlib.suppress(Exception):
                    self._save_checkpoint()
                raise
            await self._off_loop(self._save_checkpoint)
            self.stats.skipped_blank_lines = self.reader.stats.blank_lines
            ratio = self.stats.dead_letters / self.stats.done if self.stats.done else 0.0
            labels, complete = output_labels(self.task.schema)
            summary = self.summary = {
                "task": self.task.name,
                "model": self.client.model,
                "input_sha256": input_sha256,
                "concurrency": self.limit.limit,
                "concurrency_source": self.concurrency_source,
                **({"concurrency_levels": self.probe.levels} if self.probe else {}),
                **self.stats.summary(),
                # for the run's report: the labels it may count, and the input's own label's field
                PROVENANCE: self.provenance,
                OUTPUT_LABELS: labels,
                **({} if complete else {OUTPUT_LABELS_COMPLETE: False}),
                **({LABEL_FIELD: self.invocation.label_field} if self.invocation.label_field else {}),
                # sealed into the trailer: extraction publishes a shard over the threshold as failed
                "max_dead_letter_ratio": self.invocation.max_dead_letter_ratio,
                "dead_letter_threshold_exceeded": ratio > self.invocation.max_dead_letter_ratio,
            }
            await self._off_loop(self.sink.finish, summary)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.sink.close()
        self.log(self.stats.progress_line())
        self.log("summary " + json.dumps(summary, sort_keys=True))
        if summary["dead_letter_threshold_exceeded"]:
            raise DeadLetterThresholdError(
                f"{self.stats.dead_letters} of {self.stats.done} records went to the dead letters "
                f"({ratio:.1%} > {self.invocation.max_dead_letter_ratio:.1%}): "
                + ", ".join(f"{reason}={n}" for reason, n in sorted(self.stats.by_reason.items()))
            )
        return summary

    async def _off_loop(self, function: Callable[..., None], *args: Any) -> None:
        """Run a call that may block for minutes (the object sink's PUTs and their retries) in a thread: the
        requests in flight, the progress and the heartbeat go on meanwhile. Only this coroutine writes to the
        sink, and it waits here, so nothing is written beside the call; a stop waits for the call to end
        before its own checkpoint."""
        call = asyncio.ensure_future(asyncio.to_thread(function, *args))
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await call
            raise

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.invocation.progress_interval)
            self.log(self.stats.progress_line())

    async def _pipeline(self, records: itertools.islice[InputRecord]) -> None:
        pending: asyncio.Queue[asyncio.Task[Outcome] | None] = asyncio.Queue()
        limit = self.limit

        async def dispatch() -> None:
            for record in records:
                await limit.acquire()
                task = asyncio.create_task(self._process(record))
                task.add_done_callback(lambda _: limit.request_done())
                pending.put_nowait(task)
            pending.put_nowait(None)

        producer = asyncio.create_task(dispatch())
        try:
            while (task := await self._next(pending, producer)) is not None:
                outcome = await task
                if outcome.reason in _SERVER_GONE_REASONS and not await self.client.is_ready():
                    raise ServerUnavailableError(
                        f"the LLM server at {self.client.base_url} stopped answering at input line "
                        f"{outcome.line['line']}; {self.stats.done} records were written before it"
                    )
                self._write(outcome)
                limit.written()
                if self.probe is not None:
                    self.probe.completed()
                if self.stats.done % self.invocation.checkpoint_every == 0:
                    await self._off_loop(self._save_checkpoint)
            await producer
        finally:
            producer.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    @staticmethod
    async def _next(
        pending: asyncio.Queue[asyncio.Task[Outcome] | None], producer: asyncio.Task[None]
    ) -> asyncio.Task[Outcome] | None:
        """The next dispatched record, or the reader's error as soon as it fails: it queues nothing more."""
        if not pending.empty() or (producer.done() and producer.exception() is None):
            return await pending.get()
        getter = asyncio.ensure_future(pending.get())
        await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        error = producer.exception()
        assert error is not None, "a reader that ended normally queued its end"
        raise error

    def _write(self, outcome: Outcome) -> None:
        stats = self.stats
        stats.retries += outcome.retries
        if outcome.completion is not None:
            stats.prompt_tokens += outcome.completion.prompt_tokens or 0
            stats.completion_tokens += outcome.completion.completion_tokens or 0
            stats.cached_tokens += outcome.completion.cached_tokens or 0
        if outcome.reason is None:
            self.sink.write_result(outcome.line)
            stats.results += 1
            stats.reused += bool(outcome.line["meta"].get(REUSED))
            if outcome.latency is not None:
                stats.latency.add(outcome.latency)
        else:
            self.sink.write_dead_letter(outcome.line)
            stats.dead_letters += 1
            stats.by_reason[outcome.reason] += 1
        stats.sample()

    def _save_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.save(
            CheckpointState(
                records_done=self.stats.done, sink=self.sink.position(), counts=self.stats.counts()
            )
        )

    async def _process(self, record: InputRecord) -> Outcome:
        if record.fields is None:
            assert record.error is not None, "a record without fields carries its reason"
            return self._dead_letter(record, record.error, record.detail, attempts=0)
        record_sha256 = record_digest(record.fields)
        content_sha256 = content_digest(record_sha256, self.content_key)
        earlier = self.reused.get(record.line)
        if earlier is not None and (earlier.get("meta") or {}).get(CONTENT_SHA256) == content_sha256:
            return Outcome(
                line=self._result_line(record, earlier["enrichment"], {**earlier["meta"], REUSED: True})
            )
        try:
            user = self.task.template.render(record.fields)
        except MissingFieldError as exc:
            return self._dead_letter(record, exc.reason, exc.detail, attempts=0)
        request = ChatRequest(
            system=self.task.system_prompt,
            user=user,
            schema=self.task.answer_schema,
            schema_name=self.task.name,
            max_tokens=self.task.max_tokens,
            temperature=self.invocation.temperature,
        )
        policy = self.retry
        failure: RecordError | None = None
        completion: Completion | None = None
        for attempt in range(1, policy.max_attempts + 1):
            if isinstance(failure, TransientLLMError):
                # a server in trouble gets time; an invalid answer is retried at once, at a higher temperature
                await self.sleep(policy.delay(attempt - 1))
            started = time.monotonic()
            try:
                completion = await self.client.complete(request)
            except LLMRejectedError as exc:
                return self._dead_letter(record, exc.reason, exc.detail, attempts=attempt)
            except TransientLLMError as exc:
                if exc.status == 503 and self.probe is not None:
                    self.probe.overloaded()  # a full queue: vLLM, SGLang and llama.cpp answer 503
                failure = exc
                continue
            latency = time.monotonic() - started
            try:
                # a cut free-text answer is still the answer (its finish reason says so); cut JSON is not
                if completion.finish_reason == "length" and not self.task.text_answer:
                    raise InvalidOutputError(f"the answer was cut at max_tokens ({self.task.max_tokens})")
                enrichment = self.task.parse(completion.content, record.fields)
            except InvalidOutputError as exc:
                failure = exc
                if request.temperature < RETRY_TEMPERATURE:
                    request = dataclasses.replace(request, temperature=RETRY_TEMPERATURE)
                continue
            meta = {
                "model": self.client.model,
                "latency_s": round(latency, 4),
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason,
                "attempts": attempt,
                PROVENANCE: self.provenance_id,
                RECORD_SHA256: record_sha256,
                CONTENT_SHA256: content_sha256,
            }
            return Outcome(
                line=self._result_line(record, enrichment, meta),
                latency=latency,
                completion=completion,
                retries=attempt - 1,
            )
        assert failure is not None
        outcome = self._dead_letter(record, failure.reason, failure.detail, attempts=policy.max_attempts)
        outcome.completion = completion
        return outcome

    def _result_line(
        self, record: InputRecord, enrichment: dict[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """A record's result line: its answer and meta, the input's label and carried fields as they are
        now."""
        assert record.fields is not None, "only a readable record has a result"
        if (label_field := self.invocation.label_field) is not None:
            known = record.fields.get(label_field)
            meta[RESULT_LABEL] = None if known is None else label_text(known)
        line = {
            "id": record.record_id,
            "line": record.line,
            "task": self.task.name,
            "enrichment": enrichment,
            "meta": meta,
        }
        if (carry := self.invocation.carry_fields) is not None:
            line[CARRIED_FIELD] = (
                dict(record.fields)
                if ALL_FIELDS in carry
                else {name: record.fields.get(name) for name in carry}
            )
        return line

    def _dead_letter(
        self, record: InputRecord, reason: DeadLetterReason, detail: str, *, attempts: int
    ) -> Outcome:
        return Outcome(
            line={
                "id": record.record_id,
                "line": record.line,
                "task": self.task.name,
                "reason": reason,
                "detail": detail,
                "attempts": attempts,
                "record": record.fields,
                "raw": record.raw,
            },
            reason=reason,
            retries=max(attempts - 1, 0),
        )
