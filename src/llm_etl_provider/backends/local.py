"""The local backend: a run's shards and key as files, each shard's pod as local processes.

The model loader checks the model, llama.cpp's server serves it on 127.0.0.1, and the worker runs with the
pod's own invocation, its paths and server swapped for local ones. Given a server from an ``llm_etl``
connection instead (e.g. Ollama beside Airflow in docker-compose), the worker talks to that server and no
model is loaded. The worker's stdout (the sealed frames) becomes the shard's ``container-try-<try>.log``,
which the extraction reads (the latest try's) exactly as it reads a pod's log in Kubernetes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_etl_provider.backends import FrameSource, RunBackend, TaskLog, sweep_reason
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import API_KEY_ENV, OBJECT_OUTPUT, WorkerInvocation
from llm_etl_provider.contract.pod_commands import load_model_args, load_model_command
from llm_etl_provider.contract.provenance import model_digest
from llm_etl_provider.exceptions import ExtractionError, LocalRunError, worker_exit_error
from llm_etl_provider.llama_cpp import CPU_PARALLEL
from llm_etl_provider.transport.exceptions import FrameKeyError
from llm_etl_provider.transport.keys import load_key, new_key, write_key_file
from llm_etl_provider.transport.sources import file_lines

if TYPE_CHECKING:
    from llm_etl_provider.contract.shard import ShardDescriptor
    from llm_etl_provider.hooks.llm_server import LLMServer
    from llm_etl_provider.staging.cutting import Shard

_CONTAINER_LOG = re.compile(r"container-try-([1-9][0-9]{0,5})\.log")


def container_log_name(attempt: int) -> str:
    """A try's worker stdout, as its pod's log would be (one log per try, like one pod per try)."""
    return f"container-try-{attempt}.log"


@dataclass(frozen=True)
class LocalServing:
    """How local execution serves the model: the bundled (or given) GGUF with llama.cpp's server, or the
    server of an ``llm_etl`` connection."""

    model_file: Path | None = None
    parallel: int = CPU_PARALLEL
    server: LLMServer | None = None


RUN_FILE = "run.json"  # in a run's folder: whose run it is and until when it may live, for the sweeper


class LocalBackend(RunBackend):
    """A run under a local folder: ``<local_dir>/<run prefix>/`` holds ``run.json`` (the run's DAG, id and
    deadline, which the sweeper reads) and a folder per plan, with its key and a folder per shard.

    :param local_dir: the folder that holds the runs' folders
    :param plan: the stage's plan (:func:`~llm_etl_provider.contract.layout.plan_id`); None: the run's folder
    :param recorded_run_id: the DAG run the sweeper asks Airflow about, where it is not ``run_id`` (a batch's
        run is its batch, its DAG run the task's that submitted it)
    """

    def __init__(
        self,
        local_dir: str | None,
        *,
        dag_id: str,
        scope: str,
        run_id: str,
        log: TaskLog,
        plan: str | None = None,
        run_deadline_seconds: float = layout.DEFAULT_RUN_DEADLINE_SECONDS,
        recorded_run_id: str | None = None,
    ) -> None:
        if not local_dir:
            raise LocalRunError("local execution needs local_dir")
        self.root = Path(local_dir) / layout.run_prefix(scope, run_id)
        self.plan_root = self.root / plan if plan else self.root
        self.run = {
            "dag_id": dag_id,
            "run_id": recorded_run_id or run_id,
            "expires_at": int(time.time() + run_deadline_seconds),
        }
        self.log = log

    def shard_dir(self, index: int) -> Path:
        return self.plan_root / layout.shard_folder(index)

    def shard_input(self, index: int, input_format: str) -> Path:
        return self.shard_dir(index) / layout.input_file_name(input_format)

    @property
    def key_file(self) -> Path:
        return self.plan_root / layout.KEY_FILE_NAME

    def open_plan(self) -> tuple[bytes, bool]:
        if self.key_file.is_file():
            try:
                return load_key(self.key_file), False
            except FrameKeyError:
                self.log.warning("the staged key %s is unreadable: staging the plan again", self.key_file)
        if self.plan_root.exists():
            shutil.rmtree(self.plan_root)
        self.plan_root.mkdir(parents=True, mode=0o700)
        _write_atomically(self.root / RUN_FILE, json.dumps(self.run).encode())
        key = new_key()
        write_key_file(self.key_file, key)
        return key, True

    def stage_shard(self, shard: Shard, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        path = self.shard_input(shard.index, shard.input_format)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_unless_equal(path, shard.data)
        for name, content in (files or {}).items():
            _write_unless_equal(path.parent / name, content)
        return {"path": str(path)}

    def stage_object_shard(
        self, index: int, transport: bytes, files: Mapping[str, bytes] | None = None
    ) -> dict[str, Any]:
        folder = self.shard_dir(index)
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / layout.OBJECT_TRANSPORT_FILE_NAME
        if not path.is_file():  # staged before: its URLs are as good as new ones, and a worker may read them
            _write_atomically(path, transport)  # pre-signed URLs are credentials until they expire (0600)
        for name, content in (files or {}).items():
            _write_unless_equal(folder / name, content)
        return {"path": str(path)}

    def planned_transport(self, index: int) -> bytes:
        path = self.shard_dir(index) / layout.OBJECT_TRANSPORT_FILE_NAME
        try:
            return path.read_bytes()
        except OSError as exc:
            raise LocalRunError(f"shard {index}: cannot read its URLs {path}: {exc.strerror}") from None

    def put_urls(self, index: int, document: bytes) -> str:
        path = self.shard_dir(index) / layout.OBJECT_TRANSPORT_FILE_NAME
        _write_atomically(path, document)  # the worker reads the file the stage wrote, renewed in place
        return str(path)

    def remove_plan(self) -> None:
        shutil.rmtree(self.plan_root, ignore_errors=True)
        self.log.info("removed the failed stage's staging %s", self.plan_root)

    def enrich(self, invocation: WorkerInvocation, shard: ShardDescriptor, serving: LocalServing) -> Any:
        """Run the shard's pod as local processes: load the model, serve it, run the worker with the pod's
        invocation (its paths swapped for the shard's folder); raise a WorkerExitError when the worker
        fails."""
        folder = self.shard_dir(shard.index)
        staged = Path(shard.path) if shard.path else self.shard_input(shard.index, shard.input_format)
        if not staged.is_file():
            raise LocalRunError(f"shard {shard.index}: no staged input at {staged}: did the stage run?")
        environment = dict(os.environ)
        by_object = shard.transport == OBJECT_OUTPUT
        with self._serving(invocation, folder, serving, environment) as served:
            local = dataclasses.replace(
                served,
                # the object transport: the range is downloaded beside the URLs; checkpoints are in the store
                input=folder / layout.downloaded_input_name(shard.input_format) if by_object else staged,
                object_transport=staged if by_object else None,
                duplicates=staged.parent / layout.DUPLICATES_FILE_NAME if shard.duplicates else None,
                reused=staged.parent / layout.REUSED_FILE_NAME if shard.reused else None,
                key_file=self.key_file,
                checkpoint=None if by_object else folder / layout.CHECKPOINT_FILE_NAME,
                heartbeat=None,
            )
            code = self._run_worker(local, folder, environment)
        if code != 0:
            raise worker_exit_error(code, f"shard {shard.index}: the worker")
        return {"shard": shard.index, "exit_code": code}

    @contextlib.contextmanager
    def _serving(
        self, invocation: WorkerInvocation, folder: Path, serving: LocalServing, environment: dict[str, str]
    ) -> Iterator[WorkerInvocation]:
        """Serve the model as the pod's loader and sidecar would; yield the invocation that uses it."""
        if serving.server is not None:
            remote = serving.server
            self.log.info(
                "%s: enriching through the %s server at %s", folder.name, remote.api, remote.base_url
            )
            if remote.api_key:
                environment[API_KEY_ENV] = remote.api_key
            yield remote.serve(invocation)
            return
        from llm_etl_provider.backends.llama_server import (
            MODEL_SHA256,
            LlamaServer,
            LocalServerError,
            bundled_model,
        )

        try:
            model = serving.model_file or bundled_model()
        except LocalServerError as exc:
            raise LocalRunError(f"{folder.name}: {exc}") from None
        # the pod's loader command, run by this Python (its program may not be on PATH)
        sha256 = MODEL_SHA256 if serving.model_file is None else None
        load = load_model_command(str(model))[1:] + load_model_args(sha256=sha256)
        loader = subprocess.run(
            [sys.executable, "-m", "llm_etl_provider.cli", *load],
            capture_output=True,
            text=True,
            check=False,
        )
        if loader.returncode != 0:
            raise LocalRunError(f"{folder.name}: the model loader failed: {loader.stderr.strip()[-500:]}")
        try:
            with LlamaServer(
                parallel=serving.parallel, model_path=model, model_name=invocation.model,
                log_path=folder / layout.SERVER_LOG_NAME,
            ) as server:  # fmt: skip
                self.log.info("%s: llama-server ready at %s with %s", folder.name, server.url, model.name)
                yield dataclasses.replace(
                    invocation, llm_url=server.url, api="openai", model_digest=model_digest(sha256)
                )
        except LocalServerError as exc:
            raise LocalRunError(f"{folder.name}: {exc}") from None

    def _run_worker(self, invocation: WorkerInvocation, folder: Path, environment: dict[str, str]) -> int:
        with (
            (folder / container_log_name(invocation.attempt)).open("wb") as container_log,
            subprocess.Popen(
                [sys.executable, "-m", "llm_etl_provider.worker.cli", *invocation.to_argv()],
                stdout=container_log,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            ) as process,
        ):
            assert process.stderr is not None
            for line in process.stderr:  # progress and summary lines: counts only
                self.log.info("%s: %s", folder.name, line.rstrip())
            return process.wait()

    def frame_source(self, index: int) -> FrameSource:
        folder = self.shard_dir(index)
        tries = {
            int(match[1]): path
            for path in (folder.iterdir() if folder.is_dir() else ())
            if (match := _CONTAINER_LOG.fullmatch(path.name))
        }
        if not tries:
            raise ExtractionError(f"shard {index}: no worker log in {folder}: did the enrichment run?")
        attempt = max(tries)
        try:
            key = load_key(self.key_file)
        except FrameKeyError as exc:
            raise ExtractionError(str(exc)) from None
        return FrameSource(key, file_lines(tries[attempt]), f"file {tries[attempt]}", attempt=attempt)

    def cleanup(self) -> dict[str, int]:
        existed = self.root.exists()
        shutil.rmtree(self.root, ignore_errors=True)
        self.log.info("removed local staging %s", self.root if existed else "(none)")
        return {"local_dirs": int(existed)}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (mode 0600): a worker reading it never sees it half written."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
    partial.replace(path)


def _write_unless_equal(path: Path, data: bytes) -> None:
    """Stage ``data`` at ``path`` unless it holds it already (a stage run again cuts the same shards)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    _write_atomically(path, data)


def sweep_local(
    local_dir: str | Path,
    run_state: Callable[[str, str], str | None],
    *,
    now: float,
    unrecorded_older_than: float,
    log: TaskLog,
) -> int:
    """Remove the run folders under ``local_dir`` whose run ended (``run_state(dag_id, run_id)``, Airflow's
    word) or, for a run Airflow does not know, whose deadline passed; a folder without its ``run.json`` goes
    once older than ``unrecorded_older_than``. A run Airflow counts as running is never touched. Return how
    many folders went."""
    base = Path(local_dir)
    removed = 0
    for folder in sorted(base.glob("llm-etl-*")) if base.is_dir() else ():
        try:
            run = json.loads((folder / RUN_FILE).read_text())
            dag_id, run_id, expires_at = str(run["dag_id"]), str(run["run_id"]), float(run["expires_at"])
        except (OSError, ValueError, KeyError, TypeError):
            if folder.stat().st_mtime >= unrecorded_older_than:
                continue
            why = "it records no run and is older than the TTL"
        else:
            reason = sweep_reason(run_state(dag_id, run_id), expires_at, now)
            if reason is None:
                continue
            why = reason
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
        log.info("swept local staging %s: %s", folder, why)
    return removed
