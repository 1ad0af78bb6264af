"""A batch of prompts as a run of the provider's job, in local execution: staged, enriched, read back.

A batch is a run whose id is its *batch id* (:func:`batch_id_of`: the submitting task's idempotency key and
its input's fingerprint), under ``<local_dir>/<run prefix>/`` as :class:`~llm_etl_provider.backends.local.
LocalBackend` keeps any run: the plan's key, the shards, the worker's sealed log. ``batch.json`` records
whose batch it is; a detached process (``python -m llm_etl_provider.batch.job ROOT``) serves the model, runs
the worker on each shard and publishes each shard's verified results under ``published/``, then writes
``status.json``. Whoever polls (the task, or its trigger in the triggerer) reads those files: nothing runs in
the polling process, so a task that defers, retries or dies re-attaches to the same batch.

Each prompt is a record ``{"id": <custom id>, "prompt": ...}`` of the ``custom`` task, its template
``{prompt}``: a JSON schema constrains and validates the answers, or, without one, the answer is free text.
Nothing of a prompt or an answer is logged; the job's own log holds counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llm_etl_provider.backends.local import LocalBackend, LocalServing
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import API_KEY_ENV, ApiStyle, ResponseFormat
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.pod.builder import ServerSpec, pod_invocation

BATCH_SCOPE = "llm-etl-batch"  # the runs' scope (their names' prefix) beside the task group's
BATCH_FILE = "batch.json"
STATUS_FILE = "status.json"
RUNNER_FILE = "runner.json"
RUNNER_LOG = "runner.log"
HEARTBEAT_FILE = (
    "heartbeat"  # touched by the runner: its liveness, seen from any process that sees the folder
)
CANCEL_FILE = "cancel"  # written by a canceller that cannot signal the runner (another PID namespace)
HEARTBEAT_SECONDS = 5
HEARTBEAT_STALE_SECONDS = 60
PUBLISHED = "published"
PROMPT_FIELD = "prompt"
# The batch's prompts as the worker's records: their id is the custom id, their prompt the whole user prompt
PROMPT_TEMPLATE = "{" + PROMPT_FIELD + "}"
# The system prompt of a batch that gives none (the custom task needs one)
DEFAULT_SYSTEM_PROMPTS = {
    True: "Answer only with JSON that matches the requested schema.",
    False: "You are a helpful assistant. Answer the user's request.",
}
# A batch's shards: Secret-sized like the log transport's, so that Kubernetes execution stages them alike
MAX_SHARD_BYTES = 700_000
IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "in_progress", "completed", "failed", "cancelled"

log = logging.getLogger(__name__)


class BatchNotFoundError(LookupError):
    """No batch of that id is here (removed, swept, or never submitted). ``status_code`` is 404, as
    ``common.ai`` reads a provider's "unknown batch": it then submits the batch again."""

    status_code = 404


@dataclass(frozen=True)
class BatchSettings:
    """How a batch asks the model: the same for every prompt of it.

    :param model: the model's name as the server serves it
    :param system_prompt: the system prompt; empty: :data:`DEFAULT_SYSTEM_PROMPTS`
    :param max_tokens: the most tokens an answer may take
    :param schema: the answers' JSON schema (an object's), or None for free text
    :param temperature: the sampling temperature; None: the worker's default
    """

    model: str
    system_prompt: str
    max_tokens: int
    schema: dict[str, Any] | None = None
    temperature: float | None = None

    def worker_settings(self) -> dict[str, Any]:
        """The worker's settings that run this batch: every prompt gets a result line or a dead letter,
        and no number of dead letters fails it (each becomes its request's error row)."""
        return {
            "task": "custom",
            "template": PROMPT_TEMPLATE,
            "system_prompt": self.system_prompt or DEFAULT_SYSTEM_PROMPTS[self.schema is not None],
            "schema": self.schema,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "max_dead_letter_ratio": 1.0,
        }


@dataclass(frozen=True)
class BatchIdentity:
    """Whose batch it is: the submitting task's idempotency key and its input's fingerprint, and when it
    was submitted (seconds since the epoch)."""

    idempotency_key: str
    input_fingerprint: str
    submitted_at: float = field(default_factory=time.time)


def batch_id_of(idempotency_key: str, input_fingerprint: str) -> str:
    """A batch's id: the same task with the same input finds its batch again, another input makes
    another batch (a run id, usable in a frame and a name)."""
    return f"{idempotency_key}-{input_fingerprint[:16]}"


@dataclass(frozen=True)
class BatchServer:
    """The LLM server of a local batch: an ``llm_etl`` connection's (its key in the runner's environment,
    never on disk), or, with no URL, the bundled model served by llama.cpp's server."""

    base_url: str | None = None
    api: ApiStyle = "openai"
    response_format: ResponseFormat = "json_schema"


@dataclass(frozen=True)
class BatchState:
    """Where a batch stands: ``in_progress``, ``completed``, ``failed`` or ``cancelled``, with counts once
    it ended and why it failed."""

    status: str
    counts: dict[str, int] | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """One prompt's outcome, read back from the verified results: an answer (``enrichment``, with the
    server's ``model``, tokens and finish reason) or a dead letter (``reason`` and ``detail``, never the
    prompt)."""

    custom_id: str
    enrichment: dict[str, Any] | None
    model: str | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    reason: str | None = None
    detail: str | None = None


class BatchJobs(Protocol):
    """Where batches run: :class:`LocalBatchJobs`, or Kubernetes'
    (:class:`~llm_etl_provider.batch.kubernetes.KubernetesBatchJobs`)."""

    def submit(
        self,
        prompts: Sequence[tuple[str, str]],
        settings: BatchSettings,
        identity: BatchIdentity,
        server: BatchServer,
        *,
        owner: tuple[str, str] | None = None,
        api_key: str | None = None,
    ) -> str: ...

    def state(self, batch_id: str) -> BatchState: ...

    def cancel(self, batch_id: str) -> None: ...

    def find(self, idempotency_key: str, input_fingerprint: str, not_before: float) -> str | None: ...

    def results(self, batch_id: str) -> Iterator[BatchResult]: ...


class LocalBatchJobs:
    """Batches under ``local_dir`` (the sweeper's folder in local execution).

    :param local_dir: the runs' folder (``[llm_etl] local_dir``)
    :param run_deadline_seconds: how long a batch's files may live once Airflow no longer knows its DAG run
    """

    def __init__(self, local_dir: str, *, run_deadline_seconds: int = layout.DEFAULT_RUN_DEADLINE_SECONDS):
        self.local_dir = local_dir
        self.run_deadline_seconds = run_deadline_seconds

    def backend(
        self, batch_id: str, plan: str | None = None, owner: tuple[str, str] | None = None
    ) -> LocalBackend:
        dag_id, run_id = owner or (BATCH_SCOPE, batch_id)
        return LocalBackend(
            self.local_dir, dag_id=dag_id, scope=BATCH_SCOPE, run_id=batch_id, plan=plan, log=log,
            run_deadline_seconds=self.run_deadline_seconds, recorded_run_id=run_id,
        )  # fmt: skip

    def root(self, batch_id: str) -> Path:
        return self.backend(batch_id).root

    def submit(
        self,
        prompts: Sequence[tuple[str, str]],
        settings: BatchSettings,
        identity: BatchIdentity,
        server: BatchServer,
        *,
        owner: tuple[str, str] | None = None,
        api_key: str | None = None,
    ) -> str:
        """Stage ``prompts`` (custom id, prompt) and start the batch's runner; return its id. A batch of
        that id already submitted and running or completed is kept (a submission whose response was lost,
        submitted again); one that failed or was cancelled is removed and submitted afresh, as common.ai
        does after such an end. ``owner`` is the DAG run (DAG id, run id) whose end lets the sweeper remove
        the batch's files."""
        batch_id = batch_id_of(identity.idempotency_key, identity.input_fingerprint)
        if self.recorded(batch_id) is not None:
            if self.state(batch_id).status in (IN_PROGRESS, COMPLETED):
                return batch_id
            _stop_runner(self.backend(batch_id).root)  # a worker the dead runner left must not write on
            self.backend(batch_id).cleanup()  # ended failed or cancelled: its files explain nothing more
        from llm_etl_provider.staging.cutting import plan_shards
        from llm_etl_provider.staging.log_transport import stage_shards

        with tempfile.TemporaryDirectory(prefix="llm-etl-batch-") as scratch:
            source = Path(scratch) / "prompts.jsonl"
            with source.open("w", encoding="utf-8") as out:
                for custom_id, prompt in prompts:
                    out.write(json.dumps({"id": custom_id, PROMPT_FIELD: prompt}, ensure_ascii=False) + "\n")
            plan = layout.plan_id(BATCH_SCOPE, batch_id, identity.input_fingerprint, asdict(settings))
            backend = self.backend(batch_id, plan, owner)
            shards = stage_shards(
                backend, plan_shards(source, input_format="jsonl", max_shard_bytes=MAX_SHARD_BYTES),
                malformed={}, duplicates=[], plan=plan,
            )  # fmt: skip
        record = {
            "batch_id": batch_id,
            "plan": plan,
            "identity": asdict(identity),
            "settings": asdict(settings),
            "server": asdict(server),
            "request_count": len(prompts),
            "shards": shards,
        }
        _write_json(backend.root / BATCH_FILE, record)
        self._start_runner(backend.root, api_key)
        return batch_id

    def _start_runner(self, root: Path, api_key: str | None) -> None:
        environment = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        if api_key:
            environment[API_KEY_ENV] = api_key  # the server's key: in the environment, never on disk
        # Started by a launcher that exits at once: the runner, in a session of its own, outlives the task's
        # process (a deferred task's ends at once) and, orphaned, is reaped by init, not left a zombie.
        try:
            launched = subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(root / RUNNER_LOG),
                 sys.executable, "-m", "llm_etl_provider.batch.job", str(root)],
                capture_output=True, text=True, env=environment, timeout=60, check=True,
            )  # fmt: skip
            pid = int(launched.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            _write_json(root / STATUS_FILE, {"status": FAILED, "counts": None, "error": f"no runner: {exc}"})
            raise
        _write_json(root / RUNNER_FILE, {"pid": pid, "started": _process_start(pid), "host": _host()})

    def recorded(self, batch_id: str) -> dict[str, Any] | None:
        """The batch's record, or None where no batch of that id is here."""
        try:
            record: dict[str, Any] = json.loads((self.root(batch_id) / BATCH_FILE).read_text())
        except FileNotFoundError:
            return None  # an unreadable record (permissions, a volume gone) is an error, not an absence
        return record

    def state(self, batch_id: str) -> BatchState:
        """Where the batch stands; raise :class:`BatchNotFoundError` for an unknown batch."""
        root = self.root(batch_id)
        if self.recorded(batch_id) is None:
            raise BatchNotFoundError(
                f"no batch {batch_id} under {self.local_dir} (the worker's and the triggerer's [llm_etl] "
                "local_dir must be the same folder)"
            )
        if (ended := _status(root)) is not None:
            return ended
        if _runner_alive(root):
            return BatchState(IN_PROGRESS)
        if (ended := _status(root)) is not None:  # it ended between the two looks
            return ended
        return BatchState(
            FAILED, error="the batch's runner ended without finishing it (killed, or its machine restarted)"
        )

    def cancel(self, batch_id: str) -> None:
        """Stop the batch's runner (its worker checkpoints and exits) and remove the batch's files."""
        root = self.root(batch_id)
        _stop_runner(root)
        self.backend(batch_id).cleanup()

    def find(self, idempotency_key: str, input_fingerprint: str, not_before: float) -> str | None:
        """The batch this task submitted with this input at or after ``not_before``, or None."""
        batch_id = batch_id_of(idempotency_key, input_fingerprint)
        matches = identity_matches(self.recorded(batch_id), idempotency_key, input_fingerprint, not_before)
        return batch_id if matches else None

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        """Each prompt's outcome, read from the published, verified shards (results, then dead letters)."""
        published = self.root(batch_id) / PUBLISHED
        if self.recorded(batch_id) is None:
            raise BatchNotFoundError(f"no batch {batch_id} under {self.local_dir}")
        return read_results(sorted(published.glob("shard-*")) if published.is_dir() else [])


def identity_matches(
    record: dict[str, Any] | None, idempotency_key: str, input_fingerprint: str, not_before: float
) -> bool:
    """Whether the batch ``record`` (None: no batch) is this task's with this input, submitted at or after
    ``not_before``."""
    if record is None:
        return False
    identity = record["identity"]
    if identity["idempotency_key"] != idempotency_key or identity["input_fingerprint"] != input_fingerprint:
        return False
    # a minute's slack: the intent was recorded just before the submission that made the batch
    return float(identity["submitted_at"]) >= not_before - 60


def read_results(shards: list[Path]) -> Iterator[BatchResult]:
    """Each line that names its request; one that does not (a record the reader could not read whole has no
    id) is skipped, and common.ai rows that request as missing."""
    for shard in shards:
        for line in _lines(shard / "results.jsonl"):
            meta = line.get("meta") or {}
            prompt, completion = meta.get("prompt_tokens"), meta.get("completion_tokens")
            usage = None
            if isinstance(prompt, int) and isinstance(completion, int):
                usage = {"input_tokens": prompt, "output_tokens": completion}
            if isinstance(line.get("id"), str):
                yield BatchResult(
                    custom_id=line["id"],
                    enrichment=line["enrichment"],
                    model=meta.get("model"),
                    usage=usage,
                    finish_reason=meta.get("finish_reason"),
                )
        for line in _lines(shard / "dead_letter.jsonl"):
            if isinstance(line.get("id"), str):
                yield BatchResult(
                    custom_id=line["id"],
                    enrichment=None,
                    reason=line.get("reason"),
                    detail=line.get("detail"),
                )


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value))
    os.chmod(partial, 0o600)
    partial.replace(path)


_LAUNCHER = """
import subprocess, sys
log = open(sys.argv[1], "ab")
runner = subprocess.Popen(
    sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
)
print(runner.pid)
"""


def _process_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a pid reused by another process differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _host() -> str:
    """This process's view of processes: its machine's boot and its PID namespace. Another view (the
    triggerer in a container of its own) cannot see the runner's process, only its folder."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot}:{os.readlink('/proc/self/ns/pid')}"


def _status(root: Path) -> BatchState | None:
    try:
        status = json.loads((root / STATUS_FILE).read_text())
    except FileNotFoundError:
        return None
    return BatchState(status["status"], status.get("counts"), status.get("error"))


def _running(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` started at ``started`` still runs (a zombie does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _runner_alive(root: Path) -> bool:
    try:
        runner = json.loads((root / RUNNER_FILE).read_text())
    except FileNotFoundError:
        return False
    if runner.get("host") == _host():
        return _running(int(runner["pid"]), runner["started"])
    try:  # seen from elsewhere: alive while it keeps its heartbeat
        return time.time() - (root / HEARTBEAT_FILE).stat().st_mtime < HEARTBEAT_STALE_SECONDS
    except FileNotFoundError:
        return time.time() - (root / RUNNER_FILE).stat().st_mtime < HEARTBEAT_STALE_SECONDS


def _stop_runner(root: Path, timeout: float = 60) -> None:
    """Stop the batch's runner and whatever it started (its process group): by signal where this process
    sees it, else by the cancel file its heartbeat reads; wait, bounded, until it is gone."""
    try:
        runner = json.loads((root / RUNNER_FILE).read_text())
    except FileNotFoundError:
        return
    pid = int(runner["pid"])
    if runner.get("host") == _host():
        # the group outlives a runner killed alone (its worker works on): signalled while the runner runs,
        # or while a member still works in this batch's folder, never a group that only reuses the id
        if not (_running(pid, runner["started"]) or _group_alive(pid, root)):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid, root):
            time.sleep(0.1)
        if _group_alive(pid, root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        return
    (root / CANCEL_FILE).touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _status(root) is None and _runner_alive(root):
        time.sleep(0.5)


def _group_alive(pgid: int, root: Path) -> bool:
    """Whether a process of group ``pgid`` runs with this batch's folder on its command line (the runner, the
    worker, llama-server: each names a path in it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            member = int(fields[2]) == pgid and fields[0] != "Z"
            if member and str(root).encode() in (stat.parent / "cmdline").read_bytes():
                return True
    return False


def _heartbeat(root: Path, stop: threading.Event) -> None:
    """Touch the heartbeat file while the runner works; a cancel file stops the runner's group."""
    while not stop.wait(HEARTBEAT_SECONDS):
        (root / HEARTBEAT_FILE).touch()
        if (root / CANCEL_FILE).exists():
            os.killpg(os.getpgid(0), signal.SIGTERM)
            return


def run_batch(root: Path) -> int:
    """The runner: serve the model, enrich every shard, publish each verified; record how it ended."""
    from llm_etl_provider.transport.extract import extract

    counts = {"succeeded": 0, "errored": 0}
    requests = 0

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
    (root / HEARTBEAT_FILE).touch()
    beating = threading.Event()
    threading.Thread(target=_heartbeat, args=(root, beating), daemon=True).start()
    try:
        record = json.loads((root / BATCH_FILE).read_text())
        batch_id, plan, requests = record["batch_id"], record["plan"], int(record["request_count"])
        settings = BatchSettings(**record["settings"])
        backend = LocalBatchJobs(str(root.parent)).backend(batch_id, plan)
        serving = LocalServing(server=_server(BatchServer(**record["server"]), settings.model))
        for descriptor in record["shards"]:
            shard = ShardDescriptor.from_xcom(descriptor)
            invocation = pod_invocation(
                settings.worker_settings(), run_id=batch_id, shard=shard,
                server=ServerSpec(backend="llamacpp", gpus=0), model=settings.model,
            )  # fmt: skip
            backend.enrich(invocation, shard, serving)
            source = backend.frame_source(shard.index)
            manifest = extract(
                source.lines, source.key, root / PUBLISHED / layout.shard_folder(shard.index),
                run_id=batch_id, shard=shard.index, expected_records=shard.records,
                expected_input_sha256=shard.input_sha256, expected_attempt=source.attempt, plan=plan,
                source=source.description,
            )  # fmt: skip
            counts["succeeded"] += manifest["results"]
            counts["errored"] += manifest["dead_letters"]
            print(
                f"shard {shard.index}: {manifest['results']} answers, {manifest['dead_letters']} errors",
                flush=True,
            )
    except SystemExit:
        counts["cancelled"] = max(requests - counts["succeeded"] - counts["errored"], 0)
        _write_json(
            root / STATUS_FILE, {"status": CANCELLED, "counts": counts, "error": "stopped by SIGTERM"}
        )
        return 143
    except Exception as exc:  # noqa: BLE001 - whatever ended it, its status must say so (no record content)
        _write_json(root / STATUS_FILE, {"status": FAILED, "counts": counts, "error": str(exc)[:2000]})
        print(f"failed: {exc}", flush=True)
        return 1
    finally:
        beating.set()
    _write_json(root / STATUS_FILE, {"status": COMPLETED, "counts": counts, "error": None})
    return 0


def _server(server: BatchServer, model: str) -> Any:
    if not server.base_url:
        return None  # the bundled model, served by llama.cpp's server
    from llm_etl_provider.hooks.llm_server import LLMServer

    return LLMServer(
        base_url=server.base_url, api=server.api, model=model, response_format=server.response_format,
        api_key=os.environ.get(API_KEY_ENV),
    )  # fmt: skip


if __name__ == "__main__":  # the detached runner of one batch; its log (runner.log) holds counts only
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(run_batch(Path(sys.argv[1])))
