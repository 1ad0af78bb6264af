"""The pod's other command lines, beside the worker's: ``llm-etl load-model`` (the model-loader init
container) and ``llm-etl check-heartbeat`` (the worker's probes).

The pod builder writes them with the functions here, and ``llm-etl`` parses them with the parsers declared
here (:func:`add_pod_command_parsers`); :mod:`llm_etl_provider.worker.pod_commands` runs them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PROGRAM = "llm-etl"
LOAD_MODEL = "load-model"
CHECK_HEARTBEAT = "check-heartbeat"


def load_model_command(dest: str) -> list[str]:
    """The model loader's command line up to its destination; :func:`load_model_args` gives the rest."""
    return [PROGRAM, LOAD_MODEL, "--dest", dest]


def load_model_args(*, url_file: str | None = None, sha256: str | None = None) -> list[str]:
    """Download from the URL in ``url_file`` and check ``sha256``; without a URL file, verify in place."""
    checksum = ["--sha256", sha256] if sha256 else []
    return ["--url-file", url_file, *checksum] if url_file else ["--verify", *checksum]


def check_heartbeat_command(file: str, max_age: float) -> list[str]:
    return [PROGRAM, CHECK_HEARTBEAT, file, "--max-age", f"{max_age:g}"]


def add_pod_command_parsers(commands: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Add ``load-model`` and ``check-heartbeat`` to an ``add_subparsers()`` object; return their parsers."""
    load = commands.add_parser(LOAD_MODEL, help="the pod's model loader: download and check, or verify")
    load.add_argument("--dest", type=Path, required=True, help="where the model goes (in the model volume)")
    load.add_argument("--url", help="HTTP(S) URL to download (e.g. a presigned object-storage URL)")
    load.add_argument("--url-file", type=Path, help="a file holding the URL (a mounted Secret)")
    load.add_argument("--sha256", help="the model file's expected sha256")
    load.add_argument("--verify", action="store_true", help="only check the model already in place")

    heartbeat = commands.add_parser(
        CHECK_HEARTBEAT, help="the worker's probe: exit 1 when its heartbeat file is missing or stale"
    )
    heartbeat.add_argument("file", type=Path)
    heartbeat.add_argument("--max-age", type=float, default=120.0, help="seconds (default 120)")
    return load, heartbeat
