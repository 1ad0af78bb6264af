"""The worker's side of the ``object`` transport (:mod:`llm_etl_provider.contract.object_transport`): its
byte range of the input, its part objects and its checkpoint, all through pre-signed URLs.

Uploads are synchronous: a part goes at each checkpoint (every ``--checkpoint-every`` records: the pod is
invoked with the ``part_records`` the stage planned the shard's URLs for), and requests already in flight to
the LLM server go on meanwhile. Transient store errors (connection errors, 5xx, 429)
are retried with backoff; a store that keeps failing ends the run with what is checkpointed kept (exit 1: a
new try resumes). A URL the store refuses as expired (403, or 400 naming an expired token: temporary
credentials end long before the run) is asked for again: the operator renews the shard's URLs while the pod
runs (a mounted Secret changes in place), and the worker re-reads them; when no renewed URL comes within
:data:`URL_RENEWAL_WAIT` it ends with exit 1 (the next try's pod gets URLs signed when it starts, and
resumes). A refusal that a retry would meet again (404 on a write, 416, the part URLs used up) ends it as a
configuration error (exit 2: no retry).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from llm_etl_provider.contract.object_transport import (
    PART_SLACK,
    InputRange,
    ObjectTransport,
    ObjectTransportError,
    end_marker,
)
from llm_etl_provider.formats.digests import sha256_file
from llm_etl_provider.formats.exceptions import UnreadableInput
from llm_etl_provider.formats.parquet import MAGIC as PARQUET_MAGIC
from llm_etl_provider.formats.parquet import parquet_to_jsonl
from llm_etl_provider.transport.frames import WriterState
from llm_etl_provider.worker.checkpoint import Checkpoint, CheckpointState
from llm_etl_provider.worker.exceptions import ConfigurationError, WorkerError
from llm_etl_provider.worker.http_lanes import CONNECT_TIMEOUT
from llm_etl_provider.worker.retry import RetryPolicy
from llm_etl_provider.worker.sinks import FrameSink

# the worker's retry policy (exponential backoff, full jitter), with the store's own bounds
STORE_RETRIES = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0)
TIMEOUT = httpx.Timeout(120.0, connect=CONNECT_TIMEOUT)
_TRANSIENT = {429, 500, 502, 503, 504}
URL_RENEWAL_WAIT = 300.0  # seconds to wait for renewed URLs after the store refused one as expired
URL_RENEWAL_POLL = 5.0


class UrlSource:
    """The shard's pre-signed URLs, re-read from their file (``path``) when the store refuses one as
    expired: the operator renews them while the pod runs. A renewed document must plan the same shard
    (range, digest, parts); only its URLs may change."""

    def __init__(self, transport: ObjectTransport, path: Path | None = None) -> None:
        self.transport = transport
        self.path = path

    def renew(self) -> bool:
        """Re-read the URLs; True when the file now holds other URLs for the same shard."""
        if self.path is None:
            return False
        try:
            fresh = ObjectTransport.from_json(self.path.read_bytes())
        except (OSError, ObjectTransportError):
            return False  # a Secret volume swaps its files: read again at the next poll
        if _planned(fresh) != _planned(self.transport) or fresh == self.transport:
            return False
        self.transport = fresh
        return True


def _planned(transport: ObjectTransport) -> tuple[Any, ...]:
    source = transport.input
    return (
        source.start,
        source.end,
        source.sha256,
        source.prefix,
        source.row_groups,
        source.footer,
        len(transport.parts),
        transport.part_records,
    )


def as_urls(transport: ObjectTransport | UrlSource) -> UrlSource:
    return transport if isinstance(transport, UrlSource) else UrlSource(transport)


def _expired(response: httpx.Response) -> bool:
    """Whether the store refused a pre-signed URL in a way a renewed one may not meet: 403 (S3's "Request
    has expired", a signature whose session ended), or 400 naming an expired token (S3's ExpiredToken)."""
    if response.status_code == 403:
        return True
    if response.status_code != 400:
        return False
    try:
        body = response.read()
    except httpx.HTTPError:
        return False
    return b"xpired" in body  # Expired, expired: S3's ExpiredToken, GCS's "expired" messages


def _await_renewal(urls: UrlSource, what: str, status: int) -> None:
    """Wait for renewed URLs; ObjectStoreError (a new try signs afresh and resumes) when none come."""
    if urls.path is not None:  # else nothing can renew them
        for _ in range(int(URL_RENEWAL_WAIT / URL_RENEWAL_POLL)):
            time.sleep(URL_RENEWAL_POLL)
            if urls.renew():
                print(
                    f"{what}: the URL had expired (HTTP {status}); going on with renewed URLs",
                    file=sys.stderr,
                )
                return
    raise ObjectStoreError(
        f"{what}: the store refused the URL (HTTP {status}, expired?) and no renewed URL came within "
        f"{URL_RENEWAL_WAIT:.0f} s: the next try's pod gets URLs signed when it starts, and resumes"
    )


class ObjectStoreError(WorkerError):
    """The object store kept failing: a new try may succeed."""


class ObjectStoreRefusedError(ConfigurationError):
    """The object store refused what the URLs allow, or they ran out: a new try would meet the same."""


def request(
    http: httpx.Client,
    method: str,
    urls: UrlSource,
    url_of: Callable[[ObjectTransport], str],
    *,
    what: str,
    ok: tuple[int, ...] = (200,),
    **kwargs: Any,
) -> httpx.Response:
    """One request to the pre-signed URL ``url_of`` picks, retried while the store fails transiently, and
    with a renewed URL when the store refuses it as expired. The URL is never shown: its signature is a
    credential."""
    attempt = 0
    while attempt < STORE_RETRIES.max_attempts:
        attempt += 1
        try:
            response = http.request(method, url_of(urls.transport), **kwargs)
        except httpx.TransportError as exc:
            problem = type(exc).__name__
        else:
            if response.status_code in ok:
                return response
            if _expired(response):
                _await_renewal(urls, what, response.status_code)
                attempt -= 1  # a renewed URL is a new start, not a failure of the store
                continue
            if response.status_code not in _TRANSIENT:
                raise ObjectStoreRefusedError(f"{what}: the store answered HTTP {response.status_code}")
            problem = f"HTTP {response.status_code}"
        if attempt < STORE_RETRIES.max_attempts:
            time.sleep(STORE_RETRIES.delay(attempt))
    raise ObjectStoreError(f"{what}: the store failed {STORE_RETRIES.max_attempts} times (last: {problem})")


def download_input(transport: ObjectTransport | UrlSource, destination: Path, http: httpx.Client) -> None:
    """Fetch the shard's range of the input into ``destination`` (its CSV header first, where it has one),
    unless a restarted container's download is already there; refuse anything but what the stage read. A
    Parquet range (whole row groups) is read with the file's footer and written as JSON lines
    (:func:`_download_row_groups`)."""
    urls = as_urls(transport)
    source = urls.transport.input
    if source.row_groups is not None:
        _download_row_groups(urls, destination, http)
        return
    if (
        destination.is_file()
        and destination.stat().st_size == source.size
        and sha256_file(destination) == source.sha256
    ):
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256(source.prefix)
    with partial.open("wb") as handle:
        handle.write(source.prefix)
        received, digest = _read_range(urls, http, range(source.start, source.end), handle, digest)
        handle.flush()
        os.fsync(handle.fileno())
    _check_read(source, received, digest, partial)
    os.replace(partial, destination)


def _download_row_groups(urls: UrlSource, destination: Path, http: httpx.Client) -> None:
    """A Parquet range: its row groups' bytes and the file's footer, each at its own offset of a sparse
    copy of the file (nothing else of it is fetched or stored), checked against the stage's digest, then
    its rows as JSON lines in ``destination``, row n of the file on line n, as the stage read them. A
    restarted container finds its JSON lines there already: they are moved into place only once whole."""
    source = urls.transport.input
    assert source.row_groups is not None, "a Parquet range names its row groups"
    assert source.object_size is not None, "a Parquet range names the file's size"
    read_from = destination.with_name(destination.name + ".sha256")  # the range its lines were read from
    if destination.is_file() and read_from.is_file() and read_from.read_text() == source.sha256:
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    sparse = destination.with_name(destination.name + ".parquet")
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with sparse.open("wb") as handle:
            handle.write(PARQUET_MAGIC)  # the file's first bytes, which the stage read: not fetched
            handle.seek(source.start)
            in_range, digest = _read_range(urls, http, range(source.start, source.end), handle, digest)
            handle.seek(source.footer.start)
            in_footer, digest = _read_range(urls, http, source.footer, handle, digest)
            received = in_range + in_footer
            handle.truncate(source.object_size)
        _check_read(source, received, digest, sparse)
        try:
            parquet_to_jsonl(sparse, partial, row_groups=range(*source.row_groups))
        except UnreadableInput as exc:
            raise ConfigurationError(f"the input's row groups {source.row_groups}: {exc}") from None
        os.replace(partial, destination)
        read_from.write_text(source.sha256)
    finally:
        sparse.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


def _read_range(
    urls: UrlSource, http: httpx.Client, wanted: range, handle: BinaryIO, digest: Any
) -> tuple[int, Any]:
    """GET the bytes ``wanted`` of the input into ``handle`` at its position, trying again from the same
    position after a transient failure and with renewed URLs after an expired one; return how many were
    read, and ``digest`` (a hashlib object) updated with them."""
    if not wanted:
        return 0, digest
    at, before = handle.tell(), digest.copy()
    headers = {"Range": f"bytes={wanted.start}-{wanted.stop - 1}"}
    attempt = 0
    while attempt < STORE_RETRIES.max_attempts:
        attempt += 1
        received = 0
        try:
            with http.stream("GET", urls.transport.input.url, headers=headers) as response:
                status = response.status_code
                if status == 206:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                    return received, digest
                expired = _expired(response)
            if expired:
                _await_renewal(urls, "reading the input range", status)
                attempt -= 1
                continue
            if status not in _TRANSIENT:
                # 200 would be the whole object: a store that ignores Range is not usable here
                raise ObjectStoreRefusedError(f"reading the input range: the store answered HTTP {status}")
            problem = f"HTTP {status}"
        except httpx.TransportError as exc:
            problem = type(exc).__name__
        if attempt == STORE_RETRIES.max_attempts:
            raise ObjectStoreError(f"reading the input range: the store kept failing (last: {problem})")
        handle.seek(at)
        handle.truncate()
        digest = before.copy()
        time.sleep(STORE_RETRIES.delay(attempt))
    raise AssertionError("unreachable")


def _check_read(source: InputRange, received: int, digest: Any, partial: Path) -> None:
    """Refuse (and remove) a read that is not the stage's: another size or digest."""
    wanted = source.end - source.start + len(source.footer)
    if received != wanted or digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise ConfigurationError(
            f"the input range holds {received} bytes of sha256 {digest.hexdigest()[:16]}..., the stage read "
            f"{wanted} of {source.sha256[:16]}...: the input changed since the stage"
        )


class ObjectPartSink(FrameSink):
    """Results and dead letters as sealed frames in numbered part objects: a part at each checkpoint (what
    :meth:`position` makes durable) and the last one with the trailer, then the end marker.

    :param transport: the shard's pre-signed URLs (renewable: :class:`UrlSource`)
    :param http: the client the parts go through
    and the run, shard, key and try (:class:`~llm_etl_provider.worker.sinks.FrameSink`; the try is written
    into the end marker too)
    """

    def __init__(
        self,
        key: bytes,
        run_id: str,
        shard: int,
        attempt: int,
        transport: ObjectTransport | UrlSource,
        http: httpx.Client,
    ) -> None:
        super().__init__(key, run_id, shard, attempt)
        self.urls = as_urls(transport)
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
        if self.parts >= len(self.urls.transport.parts):
            raise ObjectStoreRefusedError(
                f"the shard's {len(self.urls.transport.parts)} part URLs are used up: restart it with more "
                f"(the stage gives one per checkpoint and {PART_SLACK} more)"
            )
        index = self.parts
        request(
            self.http, "PUT", self.urls, lambda urls: urls.parts[index], content=bytes(self._buffer),
            what=f"writing part {index}",
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
        marker = end_marker(self.parts, self.attempt)
        request(
            self.http,
            "PUT",
            self.urls,
            lambda urls: urls.end_put,
            content=marker,
            what="writing the end marker",
        )

    def close(self) -> None:
        self._buffer.clear()


class RemoteCheckpoint(Checkpoint):
    """The checkpoint as an object (pre-signed GET and PUT), so that a retried pod on another node resumes
    after the last part its predecessor wrote."""

    def __init__(
        self, transport: ObjectTransport | UrlSource, http: httpx.Client, fingerprint: dict[str, Any]
    ) -> None:
        super().__init__(Path("the store's checkpoint object"), fingerprint)
        self.urls = as_urls(transport)
        self.http = http

    def load(self) -> CheckpointState | None:
        response = request(
            self.http, "GET", self.urls, lambda urls: urls.checkpoint_get, what="reading the checkpoint",
            ok=(200, 404),
        )  # fmt: skip
        if response.status_code == 404:
            return None
        return self.parse(response.content, "the shard's checkpoint object")

    def save(self, state: CheckpointState) -> None:
        request(
            self.http, "PUT", self.urls, lambda urls: urls.checkpoint_put, content=self.serialize(state),
            what="writing the checkpoint",
        )  # fmt: skip
