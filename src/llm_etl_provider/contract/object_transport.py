"""The ``object`` transport's contract between the stage, the worker and the extraction, written once.

A shard's pod holds no credentials: its small Secret holds :class:`ObjectTransport`, pre-signed URLs that
expire with the run's deadline. The worker GETs its byte range of the input (``Range``), prefixes it with the
CSV header where the range does not start the input, checks the sha256 the stage computed, and reads it as
it would read a staged shard. It writes its sealed frames (the log transport's format) as numbered part
objects: one part at each checkpoint and one with the trailer; after each part it PUTs its checkpoint, which a
retried pod GETs to resume after its last part. Last, it PUTs the end marker, which says how many parts the
stream has; the extraction reads exactly those parts, in order, and verifies them as it verifies a log.

Under the run's transport folder, named after its key (``<output>/_transport/<key digest>/shard-<n>/``, so
that a stage run again with a new key never resumes what the old key sealed): ``part-<k>.frames``,
``checkpoint.json``, ``end.json``. The input's URL is a GET of the whole input object (a pre-signed URL does
not bind the ``Range`` header): each shard's Secret is as sensitive as the input, until the URL expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass

from llm_etl_provider.contract.invocation import LOG_OUTPUT, OBJECT_OUTPUT

TRANSPORTS = (LOG_OUTPUT, OBJECT_OUTPUT)  # a run's transport is its workers' --output
DEFAULT_TRANSPORT = LOG_OUTPUT
TRANSPORT_FOLDER = "_transport"  # under the run's output folder; removed by the cleanup
CHECKPOINT_OBJECT = "checkpoint.json"
END_OBJECT = "end.json"
PART_SLACK = 16  # URLs beyond one part per checkpoint: a part for each stop (SIGTERM) and the trailer's
MAX_PARTS = 500  # what one Secret holds with room to spare (a pre-signed URL is ~0.5-1.5 KB)


def key_folder(key: bytes) -> str:
    """The transport folder's name for a run's key: a digest, never the key."""
    return hashlib.sha256(b"llm-etl transport folder\0" + key).hexdigest()[:16]


def part_name(index: int) -> str:
    return f"part-{index:06d}.frames"


def parts_needed(records: int, part_records: int) -> int:
    """The part URLs a shard of ``records`` records gets: one per checkpoint, and :data:`PART_SLACK`."""
    return -(-records // part_records) + PART_SLACK


def part_records_for(records: int, checkpoint_every: int) -> int:
    """Records per part of a shard of ``records`` records: the checkpoint interval, raised so that the shard's
    URLs fit its Secret. The stage signs the shard's URLs for it, and its worker is invoked to checkpoint, and
    so write a part, this often (``--checkpoint-every``)."""
    return max(checkpoint_every, -(-records // (MAX_PARTS - PART_SLACK)), 1)


class ObjectTransportError(ValueError):
    """The object transport's document is malformed."""


@dataclass(frozen=True)
class InputRange:
    """A shard's input: ``bytes=start-(end-1)`` of the object at ``url``, after ``prefix`` (a CSV header).

    A Parquet input's range is whole row groups, ``row_groups`` = [first, stop): the worker reads it and the
    file's footer, ``bytes=tail-(object_size-1)`` (the metadata its row groups are read with), and turns
    their rows into JSON lines as the stage did (:mod:`llm_etl_provider.formats.parquet`).

    :param sha256: the digest of ``prefix`` + the range (+ the footer): what the worker must have read
    """

    url: str
    start: int
    end: int
    sha256: str
    prefix: bytes = b""
    row_groups: tuple[int, int] | None = None
    tail: int | None = None
    object_size: int | None = None

    @property
    def size(self) -> int:
        """The bytes the worker reads: the prefix, the range, and a Parquet input's footer."""
        return len(self.prefix) + self.end - self.start + len(self.footer)

    @property
    def footer(self) -> range:
        """The byte offsets of a Parquet input's footer (empty for another input)."""
        if self.tail is None or self.object_size is None:
            return range(0)
        return range(self.tail, self.object_size)


@dataclass(frozen=True)
class ObjectTransport:
    """What one shard's pod may do in the store, as pre-signed URLs.

    :param input: its range of the input
    :param parts: PUT URLs for its part objects, in order
    :param checkpoint_get: GET URL of its checkpoint object (404 until the first checkpoint)
    :param checkpoint_put: PUT URL of its checkpoint object
    :param end_put: PUT URL of its end marker
    :param part_records: records per part (:func:`part_records_for`): the worker's checkpoint interval
    """

    input: InputRange
    parts: tuple[str, ...]
    checkpoint_get: str
    checkpoint_put: str
    end_put: str
    part_records: int

    def to_json(self) -> bytes:
        document = asdict(self)
        document["input"]["prefix"] = base64.b64encode(self.input.prefix).decode()
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ObjectTransport:
        try:
            document = json.loads(data)
            source = dict(document["input"])
            source["prefix"] = base64.b64decode(source.get("prefix", ""), validate=True)
            if source.get("row_groups") is not None:
                first, stop = source["row_groups"]
                source["row_groups"] = (int(first), int(stop))
            for offset in ("start", "end", "tail", "object_size"):
                if source.get(offset) is not None and not isinstance(source[offset], int):
                    raise TypeError(f"{offset} is not a whole number")
            transport = cls(
                input=InputRange(**source),
                parts=tuple(document["parts"]),
                checkpoint_get=document["checkpoint_get"],
                checkpoint_put=document["checkpoint_put"],
                end_put=document["end_put"],
                part_records=int(document["part_records"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectTransportError(f"not an object transport document: {exc}") from None
        planned = transport.input
        if not transport.parts or transport.part_records < 1 or not 0 <= planned.start <= planned.end:
            raise ObjectTransportError("the object transport document has no parts, or a bad range")
        if planned.row_groups is not None and not (
            0 <= planned.row_groups[0] < planned.row_groups[1]
            and planned.tail is not None
            and planned.object_size is not None
            and planned.end <= planned.tail < planned.object_size
        ):
            raise ObjectTransportError("the object transport document has a bad Parquet range")
        return transport


def end_marker(parts: int, attempt: int) -> bytes:
    """The end marker's body: how many parts the finished stream has, and which try wrote its trailer."""
    return json.dumps({"parts": parts, "attempt": attempt}).encode()


def read_end_marker(data: bytes) -> int:
    """The part count of an end marker; ObjectTransportError if it is not one."""
    try:
        parts = json.loads(data)["parts"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ObjectTransportError(f"not an end marker: {exc}") from None
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise ObjectTransportError(f"an end marker with {parts!r} parts")
    return parts
