"""The input read as the worker will read it, before anything is staged: an unusable whole fails the stage;
malformed records are reported by line (never by content), and go to the dead letters."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_etl_provider.contract.codes import DeadLetterReason
from llm_etl_provider.contract.invocation import ALL_FIELDS
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.formats.parquet import kind_of, merged
from llm_etl_provider.formats.records import InputLimits, RecordReader

if TYPE_CHECKING:
    from llm_etl_provider.backends import TaskLog

FORMAT_PROBE_RECORDS = 100  # not one readable record among the first 100: the input is not what it claims


@dataclass(frozen=True)
class Validation:
    """What a read of the whole input found.

    :param malformed: the first 20 lines of each dead-letter reason's records (the first shard carries them)
    :param duplicates: the lines of every record whose id an earlier record has, in order
    :param records: the records before, between and after the boundaries given
    :param carried: the kinds of the values of the fields ``carry`` names, merged over the whole input
        (:func:`~llm_etl_provider.formats.parquet.kind_of`); None where nothing is carried
    """

    malformed: dict[str, list[int]]
    duplicates: list[int]
    records: list[int]
    carried: dict[str, Any] | None = None


def validate_input(
    local: Path,
    *,
    input_format: str,
    id_field: str,
    max_record_bytes: int,
    limits: InputLimits,
    name: str,
    log: TaskLog,
    boundaries: Sequence[int] = (),
    carry: tuple[str, ...] | None = None,
) -> Validation:
    """Read the input as the worker will; fail on an unusable whole, report malformed records by line.

    Unusable: no record at all, or not one readable record among the first ones (a file that is not the
    declared format, or not text, or whose records lack ``id_field``, the worker's ``--id-field``). Also
    finds the lines of every record whose id an earlier record has, and the records before, between and
    after the sorted input lines ``boundaries``. ``name`` is how messages name the input; ``log`` gets a
    warning per kind of malformed record. With ``carry`` (the worker's ``carry_fields``), the kinds of the
    carried fields' values over the whole input, so that every shard's output types them alike.
    """
    records = [0] * (len(boundaries) + 1)
    reader = RecordReader(
        local, input_format=input_format, id_field=id_field, max_record_bytes=max_record_bytes, limits=limits
    )
    malformed: dict[str, list[int]] = {}
    duplicates: list[int] = []
    readable = 0
    first_bad: tuple[int, str] | None = None
    carried: dict[str, Any] | None = {} if carry else None
    for count, record in enumerate(reader, 1):
        records[bisect.bisect_right(boundaries, record.line)] += 1
        if record.error is None:
            readable += 1
            if carried is not None and record.fields is not None:
                _merge_kinds(carried, record.fields, carry or ())
            continue
        first_bad = first_bad or (record.line, record.error)
        if record.error == DeadLetterReason.DUPLICATE_ID:
            duplicates.append(record.line)
        if not readable and count == FORMAT_PROBE_RECORDS:
            break
        lines = malformed.setdefault(record.error, [])
        if len(lines) < 20:
            lines.append(record.line)
    if not readable:
        if first_bad is None:
            blank = reader.stats.blank_lines
            raise StagingError(f"{name} is empty ({blank} blank lines): no record to enrich")
        line, reason = first_bad
        raise StagingError(
            f"{name} does not look like {input_format.upper()}: no readable record from line {line} "
            f"on ({reason} at line {line})"
        )
    for reason, lines in malformed.items():
        log.warning(
            "%s: records at lines %s%s are %s and will go to the dead letters",
            name, ", ".join(map(str, lines)), " and more" if len(lines) == 20 else "", reason,
        )  # fmt: skip
    return Validation(malformed, duplicates, records, carried)


def _merge_kinds(kinds: dict[str, Any], fields: dict[str, Any], carry: tuple[str, ...]) -> None:
    """Merge the kinds of a record's carried fields into ``kinds``: as the worker carries them, every field
    for ``*``, the named ones (null where missing) otherwise."""
    carried = fields if ALL_FIELDS in carry else {name: fields.get(name) for name in carry}
    for name, value in carried.items():
        kinds[name] = merged(kinds.get(name), kind_of(value))
