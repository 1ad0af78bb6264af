"""The object transport's pre-signed URLs, signed with the stores' Airflow connections: by the stage (the
plan), again when each shard's pod starts, and renewed while it runs, so that URLs signed with temporary
credentials (STS, IRSA, SSO sessions: often an hour) are always fresh for a pod that runs for days. Airflow's
side (it signs with Airflow connections): the worker only reads the document
(:mod:`llm_etl_provider.contract.object_transport`)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from llm_etl_provider.contract.object_transport import (
    CHECKPOINT_OBJECT,
    END_OBJECT,
    InputRange,
    ObjectTransport,
    part_name,
)
from llm_etl_provider.hooks.object_store import ObjectStoreSigner, expiry_seconds, signer_for

if TYPE_CHECKING:
    from llm_etl_provider.backends import RunBackend

DEFAULT_URL_RENEW_SECONDS = 300  # well inside the ~15 minutes a refreshed temporary credential has left


def signers_for(source: str, parts: str) -> tuple[ObjectStoreSigner, ObjectStoreSigner]:
    """The signers (the input's store, the output's) of a shard's URLs."""
    return signer_for(ObjectStoragePath(source)), signer_for(ObjectStoragePath(parts))


def sign_transport(
    input_range: InputRange,
    part_count: int,
    part_records: int,
    *,
    source: str,
    parts: str,
    expires: int,
    signers: tuple[ObjectStoreSigner, ObjectStoreSigner],
) -> ObjectTransport:
    """A shard's document with freshly signed URLs: a GET of the input object ``source`` (for
    ``input_range``), PUTs of its ``part_count`` parts, its checkpoint (GET and PUT) and its end marker under
    the folder ``parts``, each valid for ``expires`` seconds (or as long as the credentials that sign it),
    signed by ``signers`` (the input's store's, the output's: :func:`signers_for`)."""
    source_path, folder = ObjectStoragePath(source), ObjectStoragePath(parts)
    input_signer, output_signer = signers

    def sign(path: ObjectStoragePath, method: Any) -> str:
        return output_signer.sign(path.bucket, path.key, method, expires)

    checkpoint = folder / CHECKPOINT_OBJECT
    return ObjectTransport(
        input=dataclasses.replace(
            input_range, url=input_signer.sign(source_path.bucket, source_path.key, "GET", expires)
        ),
        parts=tuple(sign(folder / part_name(k), "PUT") for k in range(part_count)),
        checkpoint_get=sign(checkpoint, "GET"),
        checkpoint_put=sign(checkpoint, "PUT"),
        end_put=sign(folder / END_OBJECT, "PUT"),
        part_records=part_records,
    )


class UrlRenewer:
    """Signs one shard's URLs afresh and hands them to its worker (``put``): once when its pod starts, then
    every ``interval`` seconds while it runs (:meth:`running`), so that URLs signed with temporary
    credentials never expire under a pod that runs for days. A renewal that fails is logged and tried again
    at the next interval: the worker's URLs stay valid until they expire, and it waits for renewed ones.

    :param planned: the stage's document of the shard (its range, digest and part count)
    :param source: the input object (a URI, with its connection)
    :param parts: the shard's parts folder (a URI, with its connection)
    :param expires: each URL's lifetime, capped by the signature's 7 days and the credentials' own end
    :param put: gives the worker the new document (``RunBackend.put_urls``)
    """

    def __init__(
        self,
        planned: ObjectTransport,
        *,
        source: str,
        parts: str,
        expires: int,
        put: Callable[[bytes], object],
        log: Any,
    ) -> None:
        self.planned = planned
        self.source = source
        self.parts = parts
        self.expires = expires
        self.put = put
        self.log = log
        self._signers: tuple[ObjectStoreSigner, ObjectStoreSigner] | None = None

    def renew(self) -> None:
        """Sign the shard's URLs and hand them over now."""
        if self._signers is None:  # made once: their clients refresh temporary credentials themselves
            self._signers = signers_for(self.source, self.parts)
        planned = self.planned
        document = sign_transport(
            planned.input, len(planned.parts), planned.part_records,
            source=self.source, parts=self.parts, expires=self.expires, signers=self._signers,
        )  # fmt: skip
        self.put(document.to_json())

    @contextlib.contextmanager
    def running(self, interval: float) -> Iterator[None]:
        """Renew every ``interval`` seconds in a thread until the block ends."""
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(interval):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - the next interval tries again; the worker waits
                    self.log.warning(
                        "renewing the shard's URLs failed (%s): trying again in %.0f s", exc, interval
                    )

        thread = threading.Thread(target=renew_until_stopped, name="llm-etl-url-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)


def url_renewer(
    backend: RunBackend,
    index: int,
    *,
    source: str | None,
    parts: str | None,
    pod_time_limit_seconds: int,
    log: Any,
) -> UrlRenewer:
    """The renewer of object-transport shard ``index``'s URLs (its input object ``source``, its ``parts``
    folder), through its run's backend: URLs that live as long as its pod may (at most 7 days)."""
    if source is None or parts is None:
        raise ValueError(f"shard {index} was staged without its input and parts folder: stage it again")
    return UrlRenewer(
        ObjectTransport.from_json(backend.planned_transport(index)),
        source=source,
        parts=parts,
        expires=expiry_seconds(pod_time_limit_seconds),
        put=lambda document: backend.put_urls(index, document),
        log=log,
    )


def renewer_of(renewal: dict[str, Any], backend: RunBackend, log: Any) -> UrlRenewer:
    """The URL renewer a renewal description (the operator's, serialized into the trigger) names."""
    return url_renewer(
        backend,
        int(renewal["index"]),
        source=renewal["source"],
        parts=renewal["parts"],
        pod_time_limit_seconds=int(renewal["pod_time_limit_seconds"]),
        log=log,
    )
