"""Where frame streams come from: a local log file, a pod's container log streamed from the Kubernetes API, or
the object transport's part objects.

All yield lines in constant memory: a line longer than ``max_line`` (frames are under 8 KiB) is cut into
pieces, which the reader then rejects if they carry the frame magic or skips if they do not.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

from llm_etl_provider.contract.layout import WORKER_CONTAINER
from llm_etl_provider.contract.object_transport import (
    END_OBJECT,
    ObjectTransportError,
    part_name,
    read_end_marker,
)
from llm_etl_provider.transport.exceptions import MissingTrailerError

MAX_LINE = 1 << 16


def split_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE) -> Iterator[bytes]:
    """Re-cut a stream of byte chunks into lines (newline kept), none longer than ``max_line``."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n", 0, max_line)
            if end >= 0:
                cut = end + 1
            elif len(buffer) >= max_line:
                cut = max_line
            else:
                break
            yield bytes(buffer[:cut])
            del buffer[:cut]  # cheap: bytearray drops from the front without copying the rest
    if buffer:
        yield bytes(buffer)


def file_lines(path: Path, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Yield the lines of a local log file."""
    with path.open("rb") as handle:
        yield from split_lines(iter(lambda: handle.read(chunk_bytes), b""))


def pod_log_lines(
    pod: str,
    namespace: str,
    *,
    container: str = WORKER_CONTAINER,
    core_api: Any = None,
    chunk_bytes: int = 1 << 16,
    timestamps: bool = False,
    since_seconds: int | None = None,
    follow: bool = False,
    request_timeout: float | None = None,
) -> Generator[bytes, None, None]:
    """Stream a container's log through the Kubernetes API, without loading it whole.

    :param pod: the pod's name
    :param namespace: its namespace
    :param container: the container whose log holds the frames
    :param core_api: a ``kubernetes.client.CoreV1Api``; default: one from the kubeconfig or in-cluster config
    :param timestamps: each line begins with the time the kubelet received it (RFC 3339)
    :param since_seconds: only the lines of the last seconds
    :param follow: and the lines written from now on, until the container ends
    :param request_timeout: seconds the request may take (a followed log: in silence)
    """
    if core_api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        core_api = client.CoreV1Api()
    response = core_api.read_namespaced_pod_log(
        pod,
        namespace,
        container=container,
        follow=follow,
        timestamps=timestamps,
        since_seconds=since_seconds,
        _preload_content=False,
        _request_timeout=request_timeout,
    )
    try:
        yield from split_lines(response.stream(chunk_bytes))
    finally:
        response.close()  # a stream refused part way is not drained: its connection cannot be reused
        response.release_conn()


def object_part_lines(folder: Any, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Yield the lines of a shard's part objects under ``folder`` (a UPath or ObjectStoragePath), as many as
    its end marker says, in order. No end marker: the worker did not finish, and there is no whole stream."""
    try:
        parts = read_end_marker((folder / END_OBJECT).read_bytes())
    except FileNotFoundError:
        raise MissingTrailerError(
            f"{folder}: no {END_OBJECT}: the worker did not finish its stream (no trailer was written)"
        ) from None
    except ObjectTransportError as exc:
        raise MissingTrailerError(f"{folder}/{END_OBJECT}: {exc}") from None

    def chunks() -> Iterator[bytes]:
        for index in range(parts):
            try:
                with (folder / part_name(index)).open("rb") as handle:
                    yield from iter(lambda: handle.read(chunk_bytes), b"")
            except FileNotFoundError:
                raise MissingTrailerError(
                    f"{folder}: part {index} of {parts} is missing: the stream is not whole"
                ) from None

    yield from split_lines(chunks())
