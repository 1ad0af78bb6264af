"""The worker's side of the ``object`` transport (:mod:`llm_etl_provider.contract.object_transport`): its
byte range of the input, its part objects and its checkpoint, all through pre-signed URLs.

Uploads are synchronous: a part goes at each checkpoint (every ``part_records`` records), and requests
already in flight to the LLM server go on meanwhile. Transient store errors (connection errors, 5xx, 429)
are retried with backoff; a store that keeps failing ends the run with what is checkpointed kept (exit 1: a
new try resumes). A refusal that a retry would meet again (an expired or wrong URL: 403, 404 on a write, 416,
the part URLs used up) ends it as a configuration error (exit 2: no retry).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from llm_etl_provider.contract.object_transport import PART_SLACK, ObjectTransport, end_marker
from llm_etl_provider.transport.frames import WriterState
from llm_etl_provider.worker.checkpoint import Checkpoint, CheckpointState
from llm_etl_provider.worker.exceptions import ConfigurationError, WorkerError
from llm_etl_provider.worker.model_loader import sha256_file
from llm_etl_provider.worker.retry import RetryPolicy
from llm_etl_provider.worker.sinks import FrameSink

# the worker's retry policy (exponential backoff, full jitter), with the store's own bounds
STORE_RETRIES = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0)
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
_TRANSIENT = {429, 500, 502, 503, 504}


class ObjectStoreError(WorkerError):
    """The object store kept failing: a new try may succeed."""


class ObjectStoreRefusedError(ConfigurationError):
    """The object store refused what the URLs allow, or they ran out: a new try would meet the same."""


def request(
    http: httpx.Client, method: str, url: str, *, what: str, ok: tuple[int, ...] = (200,), **kwargs: Any
) -> httpx.Response:
    """One request to a pre-signed URL, retried while the store fails transiently. The URL is never
    shown: its signature is a credential."""
    for attempt in range(1, STORE_RETRIES.max_attempts + 1):
        try:
            response = http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            problem = type(exc).__name__
        else:
            if response.status_code in ok:
                return response
            if response.status_code not in _TRANSIENT:
                raise ObjectStoreRefusedError(f"{what}: the store answered HTTP {response.status_code}")
            problem = f"HTTP {response.status_code}"
        if attempt < STORE_RETRIES.max_attempts:
            time.sleep(STORE_RETRIES.delay(attempt))
    raise ObjectStoreError(f"{what}: the store failed {STORE_RETRIES.max_attempts} times (last: {problem})")


def download_input(transport: ObjectTransport, destination: Path, http: httpx.Client) -> None:
    """Fetch the shard's range of the input into ``destination`` (its CSV header first, where it has one),
    unless a restarted container's download is already there; refuse anything but what the stage read."""
    source = transport.input
    if (
        destination.is_file()
        and destination.stat().st_size == source.size
        and sha256_file(destination) == source.sha256
    ):
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256(source.prefix)
    received = 0
    headers = {"Range": f"bytes={source.start}-{source.end - 1}"} if source.end > source.start else {}
    with partial.open("wb") as handle:
        handle.write(source.prefix)
        if headers:
            for attempt in range(1, STORE_RETRIES.max_attempts + 1):
                try:
                    with http.stream("GET", source.url, headers=headers) as response:
                        status = response.status_code
                        if status == 206:
                            for chunk in response.iter_bytes(1 << 20):
                                handle.write(chunk)
                                digest.update(chunk)
                                received += len(chunk)
                            break
                    if status not in _TRANSIENT:
                        # 200 would be the whole object: a store that ignores Range is not usable here
                        raise ObjectStoreRefusedError(
                            f"reading the input range: the store answered HTTP {status}"
                        )
                    problem = f"HTTP {status}"
                except httpx.TransportError as exc:
                    problem = type(exc).__name__
                if attempt == STORE_RETRIES.max_attempts:
                    raise ObjectStoreError(
                        f"reading the input range: the store kept failing (last: {problem})"
                    )
                handle.seek(len(source.prefix))
                handle.truncate()
                digest, received = hashlib.sha256(source.prefix), 0
                time.sleep(STORE_RETRIES.delay(attempt))
        handle.flush()
        os.fsync(handle.fileno())
    if received != source.end - source.start or digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise ConfigurationError(
            f"the input range holds {received} bytes of sha256 {digest.hexdigest()[:16]}..., the stage read "
            f"{source.end - source.start} of {source.sha256[:16]}...: the input changed since the stage"
        )
    os.replace(partial, destination)


class ObjectPartSink(FrameSink):
    """Results and dead letters as sealed frames in numbered part objects: a part at each checkpoint (what
    :meth:`position` makes durable) and the last one with the trailer, then the end marker.

    :param transport: the shard's pre-signed URLs
    :param http: the client the parts go through
    and the run, shard, key and try (:class:`~llm_etl_provider.worker.sinks.FrameSink`; the try is written
    into the end marker too)
    """

    def __init__(
        self,
        key: bytes,
        run_id: str,
        shard: int,
        transport: ObjectTransport,
        http: httpx.Client,
        *,
        attempt: int = 1,
    ) -> None:
        super().__init__(key, run_id, shard, attempt=attempt)
        self.transport = transport
        self.http = http
        self.parts = 0  # parts written (and so the next part's number)
        self._buffer = bytearray()

    def open(self, resume_from: dict[str, Any] | None) -> None:
        state = None
        if resume_from is not None:
            state = WriterState(**resume_from["writer"])
            self.parts = int(resume_from["parts"])
        self._open_writer(self._buffer.extend, state)

    def _put_part(self) -> None:
        if not self._buffer:
            return
        if self.parts >= len(self.transport.parts):
            raise ObjectStoreRefusedError(
                f"the shard's {len(self.transport.parts)} part URLs are used up: restart it with more "
                f"(the stage gives one per checkpoint and {PART_SLACK} more)"
            )
        request(
            self.http, "PUT", self.transport.parts[self.parts], content=bytes(self._buffer),
            what=f"writing part {self.parts}",
        )  # fmt: skip
        self.parts += 1
        self._buffer.clear()

    def position(self) -> dict[str, Any]:
        writer = self._frames()
        writer.flush()
        self._put_part()
        return {"writer": asdict(writer.state), "parts": self.parts}

    def finish(self, summary: dict[str, Any]) -> None:
        self._seal(summary)
        self._put_part()
        request(
            self.http, "PUT", self.transport.end_put, content=end_marker(self.parts, self.attempt),
            what="writing the end marker",
        )  # fmt: skip

    def close(self) -> None:
        self._buffer.clear()


class RemoteCheckpoint(Checkpoint):
    """The checkpoint as an object (pre-signed GET and PUT), so that a retried pod on another node resumes
    after the last part its predecessor wrote."""

    def __init__(self, transport: ObjectTransport, http: httpx.Client, fingerprint: dict[str, Any]) -> None:
        super().__init__(Path("the store's checkpoint object"), fingerprint)
        self.transport = transport
        self.http = http

    def load(self) -> CheckpointState | None:
        response = request(
            self.http, "GET", self.transport.checkpoint_get, what="reading the checkpoint", ok=(200, 404)
        )
        if response.status_code == 404:
            return None
        return self.parse(response.content, "the shard's checkpoint object")

    def save(self, state: CheckpointState) -> None:
        request(
            self.http, "PUT", self.transport.checkpoint_put, content=self.serialize(state),
            what="writing the checkpoint",
        )  # fmt: skip
