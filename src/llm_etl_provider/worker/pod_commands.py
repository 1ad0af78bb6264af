"""Run the pod's other commands, beside the worker: ``llm-etl load-model`` (the model-loader init container)
and ``llm-etl check-heartbeat`` (the worker's probes), whose command lines are
:mod:`llm_etl_provider.contract.pod_commands`'s. Airflow-free, like the rest of the worker's image."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from llm_etl_provider.contract.codes import ExitCode
from llm_etl_provider.contract.pod_commands import add_pod_command_parsers


def add_pod_commands(commands: Any) -> None:
    """Add ``load-model`` and ``check-heartbeat`` to an ``add_subparsers()`` object, each run here."""
    load, heartbeat = add_pod_command_parsers(commands)
    load.set_defaults(handler=load_model)
    heartbeat.set_defaults(handler=check_heartbeat)


def check_heartbeat(args: argparse.Namespace) -> int:
    from llm_etl_provider.worker.heartbeat import heartbeat_age

    age = heartbeat_age(args.file)
    if age is None:
        print(f"no heartbeat yet at {args.file}", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"the worker's last heartbeat is {age:.0f} s old (limit {args.max_age:.0f} s)", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Exit on SIGTERM as the signal would: as PID 1 in its container, a process that does not handle it
    ignores it, and the kubelet waits out the pod's grace period before it kills it."""

    def stop(signum: int, frame: object) -> None:
        # not print(): a signal arriving during a print to stderr would make it a reentrant call
        os.write(2, b"error: stopped by SIGTERM\n")
        raise SystemExit(ExitCode.STOPPED)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _model_url(args: argparse.Namespace) -> str:
    if args.url_file:
        try:
            return str(args.url_file.read_text().strip())
        except OSError as exc:
            raise SystemExit(
                f"error: cannot read the model URL file {args.url_file}: {exc.strerror}"
            ) from None
    return str(args.url or "")


def load_model(args: argparse.Namespace) -> int:
    from llm_etl_provider.worker.exceptions import WorkerError
    from llm_etl_provider.worker.model_loader import download, verify

    try:
        with _exit_on_sigterm():
            if args.verify:
                verify(args.dest, args.sha256)
            elif (url := _model_url(args)) and args.sha256:
                download(url, args.dest, args.sha256)
            else:
                print(
                    "error: give --url-file or --url, and --sha256, to download; or --verify", file=sys.stderr
                )
                return ExitCode.CONFIGURATION
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return ExitCode.OK
