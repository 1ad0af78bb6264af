"""The programs that the project's build scripts cache outside the checkout (kube-apiserver, etcd, weed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from llm_etl_provider.backends.llama_server import cache_dir


def find_built(
    env: str, pattern: str, programs: Sequence[str], *, error: type[Exception], built_by: str
) -> Path:
    """The folder holding every one of ``programs``: ``$env``, or the newest of the build cache's folders
    matching ``pattern``; ``error`` names where it looked and ``built_by`` (the script that builds them)."""
    if explicit := os.environ.get(env):
        candidates = [Path(explicit)]
    else:
        candidates = sorted(cache_dir().glob(pattern), reverse=True)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in programs):
            return folder
    where = f"${env}={os.environ[env]}" if env in os.environ else str(cache_dir())
    raise error(f"{' and '.join(programs)} not found in {where}: build with {built_by}")
