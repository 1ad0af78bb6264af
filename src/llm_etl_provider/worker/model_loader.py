"""The pod's model loader: fetch a model file over HTTP(S) and check its sha256, or verify one in place.

Runs as the ``model-loader`` init container (``llm-etl load-model``) before the LLM server starts. A download
goes to a temporary name and is renamed only once its checksum matches, so the server never sees a partial or
altered model. No Airflow, no credentials beyond what the URL carries (e.g. a presigned object-storage URL).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from llm_etl_provider.formats.digests import sha256_file
from llm_etl_provider.worker.exceptions import ConfigurationError, ModelLoadError
from llm_etl_provider.worker.retry import RetryPolicy


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _log(line: str) -> None:
    print(f"model-loader: {line}", file=sys.stderr, flush=True)


def verify(dest: Path, sha256: str | None) -> None:
    """Check that the model is in place (and matches ``sha256`` when given)."""
    if not dest.exists():
        raise ModelLoadError(f"{dest} does not exist: the model volume does not hold the model")
    if sha256 is None:
        _log(f"{dest} is present")
        return
    if not dest.is_file():
        raise ConfigurationError(f"{dest} is a directory: a sha256 check needs a single model file")
    actual = sha256_file(dest)
    if actual != sha256:
        raise ModelLoadError(f"{dest} has sha256 {actual}, expected {sha256}")
    _log(f"{dest} verified (sha256 {sha256[:12]}...)")


def download(
    url: str, dest: Path, sha256: str, *, retry: RetryPolicy | None = None, timeout: float = 60.0
) -> None:
    """Download ``url`` to ``dest``, resuming after transient failures, and check the sha256."""
    if dest.exists() and dest.is_file() and sha256_file(dest) == sha256:
        _log(f"{dest} is already in place and verified")
        return
    policy = retry or RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=30.0)
    partial = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    shown = url.split("?", 1)[0]  # a presigned URL's query holds credentials: never log it
    for attempt in range(1, policy.max_attempts + 1):
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with httpx.stream(
                "GET", url, headers=headers, timeout=timeout, follow_redirects=True
            ) as response:
                if response.status_code == 416 or (offset and response.status_code == 200):
                    partial.unlink(missing_ok=True)  # the server ignores ranges: start over
                    offset = 0
                if response.status_code >= 500:
                    raise httpx.HTTPStatusError("server error", request=response.request, response=response)
                if response.status_code >= 400:
                    raise ModelLoadError(f"GET {shown} answered HTTP {response.status_code}")
                started, received = time.monotonic(), 0
                with partial.open("ab") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                        received += len(chunk)
                elapsed = max(time.monotonic() - started, 1e-9)
                _log(f"received {received / 1e6:.1f} MB from {shown} at {received / 1e6 / elapsed:.1f} MB/s")
            break
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if attempt == policy.max_attempts:
                raise ModelLoadError(
                    f"GET {shown} failed after {attempt} attempts: {type(exc).__name__}"
                ) from None
            delay = policy.delay(attempt)
            _log(f"attempt {attempt} failed ({type(exc).__name__}); retrying in {delay:.1f} s")
            _pause(delay)
    actual = sha256_file(partial)
    if actual != sha256:
        partial.unlink()
        raise ModelLoadError(f"{shown} has sha256 {actual}, expected {sha256}: refusing the model")
    os.replace(partial, dest)
    _log(f"{dest} in place and verified")
