"""The shard descriptor the stage hands to each shard's enrichment and extraction, and the run-id rule."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from llm_etl_provider.contract.object_transport import DEFAULT_TRANSPORT

_RUN_ID = re.compile(r"[A-Za-z0-9._:+\-]{1,200}")


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if frames can carry it; raise ValueError otherwise."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r} is not usable in a frame: use 1-200 letters, digits and . _ : + -"
        )
    return run_id


@dataclass(frozen=True)
class ShardDescriptor:
    """One staged shard. It travels through XCom as a plain dict (:meth:`to_xcom`, :meth:`from_xcom`).

    :param index: 0-based shard number
    :param records: the records the stage counted in it (extraction checks the stream holds as many)
    :param line_offset: what the worker adds to a shard line number to get the input line number
    :param input_format: ``jsonl`` or ``csv``
    :param first_line: the input line its first record line comes from
    :param bytes: its compressed size
    :param input_sha256: the sha256 of its staged file: the worker reports the digest of what it read, and
        extraction refuses a stream computed over anything else
    :param secret: the Secret holding it (Kubernetes)
    :param path: the file holding it (local execution)
    :param work_claim: the PersistentVolumeClaim for its checkpoint and spool, if any
    :param duplicates: how many of its input lines repeat an id an earlier shard holds; their line numbers
        are staged with the shard (:mod:`~llm_etl_provider.contract.duplicates`) for the worker
    :param reused: how many of its records have an earlier result (an incremental run): those results are
        staged with the shard (:mod:`~llm_etl_provider.contract.reuse`), published where still valid
    :param golden: a shard of the golden set (the quality gate), not of the input: it publishes under
        ``golden-<index>`` (:func:`~llm_etl_provider.contract.layout.published_folder`)
    :param malformed: reason -> first input lines of malformed records (shard 0 reports the input's)
    :param transport: ``log`` (its input in its Secret, its frames in its log) or ``object`` (its Secret holds
        pre-signed URLs: :mod:`~llm_etl_provider.contract.object_transport`)
    :param egress: the object transport: the store's ``[address or CIDR, port]`` pairs its pod may reach
    :param parts: the object transport: the folder (a URI) of its part objects, checkpoint and end marker
    :param source: the object transport: the input object (a URI) its range is read from
    :param part_records: the object transport: the records per part the stage signed its part URLs for,
        which its worker checkpoints at (the setting ``checkpoint_every``, raised for a large shard)
    :param plan: the stage's plan it belongs to (:func:`~llm_etl_provider.contract.layout.plan_id`): its
        extraction writes it into the shard's manifest; the run's publishing counts only its plan's shards
    :param key_secret: the Secret holding its plan's frame key (Kubernetes)
    :param carried_columns: the Arrow types of the input columns its results carry, where the input has
        them (Parquet): a serialized Arrow schema (base64), which the Parquet output gives those columns
    :param line_ids: its records are named by their input line (the input has no ``id`` field): its worker
        is told ``--id-field #line`` (:data:`~llm_etl_provider.contract.invocation.LINE_IDS`)
    """

    index: int
    records: int
    line_offset: int
    input_format: str
    first_line: int = 1
    bytes: int = 0
    input_sha256: str | None = None
    secret: str | None = None
    path: str | None = None
    work_claim: str | None = None
    duplicates: int = 0
    reused: int = 0
    golden: bool = False
    malformed: dict[str, list[int]] = field(default_factory=dict)
    transport: str = DEFAULT_TRANSPORT
    egress: list[list[Any]] = field(default_factory=list)
    parts: str | None = None
    source: str | None = None
    part_records: int | None = None
    plan: str | None = None
    key_secret: str | None = None
    carried_columns: str | None = None
    line_ids: bool = False

    def to_xcom(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_xcom(cls, value: Any) -> ShardDescriptor:
        """Read a descriptor from XCom; raise TypeError for anything else."""
        if isinstance(value, ShardDescriptor):
            return value
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(value, dict) or not {"index", "records", "line_offset", "input_format"} <= set(
            value
        ):
            raise TypeError(
                f"shard must be a StageInputOperator shard descriptor, not {type(value).__name__}"
            )
        # fields a newer stage may add are left for the newer tasks that read them
        data = {name: item for name, item in value.items() if name in names}
        try:
            for name in ("index", "records", "line_offset", "duplicates", "reused"):
                if name in data:
                    data[name] = _integer(data[name])
            if data.get("part_records") is not None:  # the object transport's only
                data["part_records"] = _integer(data["part_records"])
        except (TypeError, ValueError):
            raise TypeError("the shard descriptor holds a non-integer index, count or line") from None
        return cls(**data)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(type(value).__name__)
    return int(value)
