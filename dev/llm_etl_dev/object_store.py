"""SeaweedFS as a real S3-compatible object store on 127.0.0.1, for the development cluster and the tests.

``weed`` is built from its Go module by ``scripts/build-seaweedfs.sh`` and cached like llama-server. One
process serves master, volume, filer and the S3 gateway; one identity (a fresh key pair per start) may do
everything, and unsigned requests are refused. The bucket :data:`BUCKET` is created at start.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_etl_dev.builds import find_built
from llm_etl_dev.processes import stop_process
from llm_etl_provider.backends.llama_server import free_port

WEED_ENV = "LLM_ETL_SEAWEEDFS_BIN"  # a folder holding weed
BUCKET = "llm-etl"
REGION = "us-east-1"
START_TIMEOUT = 60.0


class ObjectStoreError(RuntimeError):
    """The S3 server could not be found or started; the message says why."""


def find_weed() -> Path:
    """SeaweedFS's ``weed``: in $LLM_ETL_SEAWEEDFS_BIN, or scripts/build-seaweedfs.sh's cache."""
    built_by = "scripts/build-seaweedfs.sh (about 5 minutes, cached)"
    folder = find_built(WEED_ENV, "seaweedfs-*/bin", ["weed"], error=ObjectStoreError, built_by=built_by)
    return folder / "weed"


@dataclass(frozen=True)
class S3Account:
    """Where the store answers and the one identity it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    def environment(self) -> dict[str, str]:
        """The AWS SDKs' own variables, which boto3, s3fs and Airflow's ``aws_default`` (when no such
        connection is defined) read."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this account (boto3 comes with the ``amazon`` extra)."""
        try:
            import boto3
        except ImportError:
            raise ObjectStoreError(
                "the S3 server needs boto3: install llm-etl-provider[amazon] (scripts/setup.sh does)"
            ) from None
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )


def seaweedfs_command(weed: Path, root: Path, address: str = "127.0.0.1") -> tuple[list[str], S3Account]:
    """The ``weed server`` command for a store under ``root`` (data, identity file) on free ports of
    ``address``, and the account it will accept. Every port is given: the gRPC defaults (HTTP port + 10,000)
    may not exist."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    account = S3Account(
        endpoint=f"http://{address}:{(s3_port := free_port())}",
        access_key="llmetl" + secrets.token_hex(7),
        secret_key=secrets.token_urlsafe(30),
    )
    identity = {
        "name": "llm-etl-dev",
        "credentials": [{"accessKey": account.access_key, "secretKey": account.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config = root / "s3.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {
        name: free_port()
        for name in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                     "filer.port.grpc", "s3.port.grpc", "metricsPort")
    }  # fmt: skip
    argv = [
        str(weed), "server", f"-dir={root / 'data'}", f"-ip={address}", f"-ip.bind={address}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3", f"-s3.port={s3_port}", f"-s3.config={config}",
        "-volume.max=16", f"-filer.localSocket={root / 'filer.sock'}",
    ]  # fmt: skip
    return argv, account


def create_bucket(account: S3Account, alive: Any, log: Path, *, bucket: str = BUCKET) -> None:
    """Create ``bucket`` once the store takes it (its S3 gateway answers a few seconds after start);
    ``alive()`` says whether the server still runs, ``log`` is its output (its end goes in the error)."""
    client = account.client()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception as exc:  # noqa: BLE001 - not up yet: refused connections, 5xx while the filer starts
            if not alive():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
                raise ObjectStoreError(
                    f"the S3 server exited while starting; the end of {log}:\n{tail}"
                ) from None
            if time.monotonic() > deadline:
                raise ObjectStoreError(
                    f"the S3 server at {account.endpoint} did not create bucket {bucket} in "
                    f"{START_TIMEOUT:.0f} s: {exc}"
                ) from None
        time.sleep(0.3)


@contextlib.contextmanager
def running_seaweedfs(root: Path, log: Path | None = None) -> Iterator[S3Account]:
    """SeaweedFS under ``root`` with the bucket :data:`BUCKET`, for as long as the block runs (tests and
    benchmarks; ``llm-etl-dev dev-cluster`` starts its own beside the control plane)."""
    argv, account = seaweedfs_command(find_weed(), root)
    log = log or root / "seaweedfs.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        create_bucket(account, lambda: process.poll() is None, log)
        yield account
    finally:
        stop_process(process, 20, group=True)
