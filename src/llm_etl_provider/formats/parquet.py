"""Parquet in and out, on the Airflow side only (the worker reads and writes JSON lines).

In: :func:`parquet_to_jsonl` turns a Parquet file into JSON lines, row ``n`` (1-based, in file order) on line
``n``, reading one record batch at a time: the stage cuts, validates and stages those lines as any JSONL
input, and a result's ``line`` is its input row. Values become JSON as a warehouse would export them:
timestamps, dates and times in ISO 8601, decimals as text (no precision lost), binary as text where it is
UTF-8 (else base64), maps as objects, NaN and infinities as null.

Out: :func:`write_parquet` turns a shard's verified result or dead-letter lines into a Parquet file, a row
group at a time: the enrichment and its meta as typed structs, the carried input fields as columns of their
own beside them. The types are those of the values (:func:`kind_of`), merged over the shard: integers widen to
numbers, objects to the union of their fields, and values of no common type are JSON text.

Needs pyarrow: the ``parquet`` extra (``pip install 'llm-etl-provider[parquet]'``).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from llm_etl_provider.contract.invocation import AUTO_FORMAT, CARRIED_FIELD
from llm_etl_provider.formats.exceptions import UnreadableInput

PARQUET_FORMAT = "parquet"
PARQUET_SUFFIXES = (".parquet", ".pq")
MAGIC = b"PAR1"
RESULT_COLUMNS = ("id", "line", "task", "enrichment", "meta")  # a result line's own fields
ROWS_PER_BATCH = 4096  # rows converted at once: memory is bounded by a batch, not by the file


def pyarrow_modules() -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, or a clear error where the extra is not installed."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as missing:
        raise UnreadableInput(
            f"Parquet needs pyarrow: pip install 'llm-etl-provider[parquet]' ({missing})"
        ) from None
    return pyarrow, pyarrow.parquet


def declared_parquet(name: str, declared: str) -> bool:
    """Whether the stage reads the input ``name`` as Parquet: declared so, or ``auto`` and named
    ``.parquet`` or ``.pq``."""
    return declared == PARQUET_FORMAT or (
        declared == AUTO_FORMAT and Path(name).suffix.lower() in PARQUET_SUFFIXES
    )


def parquet_to_jsonl(source: Path, target: Path, *, rows_per_batch: int = ROWS_PER_BATCH) -> int:
    """Write each row of the Parquet file ``source`` as a JSON line of ``target``; return the rows. A file
    without Parquet's magic bytes at both ends, or that pyarrow cannot read, is refused
    (:class:`UnreadableInput`)."""
    pa, parquet = pyarrow_modules()
    with source.open("rb") as handle:
        head = handle.read(len(MAGIC))
        size = handle.seek(0, 2)
        handle.seek(max(size - len(MAGIC), 0))
        tail = handle.read(len(MAGIC))
    if size < 3 * len(MAGIC) or head != MAGIC or tail != MAGIC:
        raise UnreadableInput("not a Parquet file (no PAR1 magic bytes at its start and end)")
    rows = 0
    try:
        reader = parquet.ParquetFile(source)
        with target.open("w", encoding="utf-8") as out:
            for batch in reader.iter_batches(batch_size=rows_per_batch):
                for row in batch.to_pylist():
                    out.write(json.dumps(_json_row(row), ensure_ascii=False, allow_nan=False) + "\n")
                    rows += 1
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UnreadableInput(f"cannot read it as Parquet ({type(exc).__name__}: {exc})") from None
    return rows


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(name): _json_value(value) for name, value in row.items()}


def _json_value(value: Any) -> Any:
    """A Parquet value as JSON can hold it."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return _json_row(value)
    if isinstance(value, list) and value and all(isinstance(item, tuple) for item in value):
        # a map's (key, value) pairs: an object, as JSON has maps
        return {str(_json_value(key)): _json_value(item) for key, item in value}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return str(value)


# A JSON value's kind: None (only nulls), "boolean", "integer", "number", "string", "json" (anything),
# ("list", item kind) or ("struct", {field: kind})
Kind = Any


def kind_of(value: Any) -> Kind:
    """The JSON ``value``'s kind."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        item: Kind = None
        for element in value:
            item = merged(item, kind_of(element))
        return ("list", item)
    if isinstance(value, dict):
        return ("struct", {str(name): kind_of(element) for name, element in value.items()})
    return "json"


def merged(known: Kind, seen: Kind) -> Kind:
    """The kind that holds values of both kinds: integers widen to numbers, structs to the union of their
    fields; kinds that share no type are JSON text."""
    if known is None or known == seen:
        return seen if known is None else known
    if seen is None:
        return known
    if known in ("integer", "number") and seen in ("integer", "number"):
        return "number"
    if isinstance(known, tuple) and isinstance(seen, tuple) and known[0] == seen[0]:
        if known[0] == "list":
            return ("list", merged(known[1], seen[1]))
        fields = dict(known[1])
        for name, kind in seen[1].items():
            fields[name] = merged(fields.get(name), kind)
        return ("struct", fields)
    return "json"


def arrow_type(kind: Kind) -> Any:
    """The Arrow type of a kind: a struct, a list, or a scalar; text for a kind seen only as null. JSON text
    (``json``, and an object that never had a field) is a ``large_string``, which Parquet stores as any
    text: :func:`_fit` writes every value of it as JSON, a string too."""
    pa, _ = pyarrow_modules()
    if isinstance(kind, tuple):
        if kind[0] == "list":
            return pa.list_(arrow_type(kind[1]))
        if kind[1]:
            return pa.struct([pa.field(name, arrow_type(sub)) for name, sub in kind[1].items()])
        return pa.large_string()
    scalars = {
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
        "json": pa.large_string(),
    }
    return scalars.get(str(kind), pa.string())


def _fit(value: Any, kind: Any) -> Any:
    """``value`` (from JSON) shaped for the Arrow type ``kind``: JSON text for ``large_string``, text where
    the type is a string and the value is not one."""
    pa, _ = pyarrow_modules()
    if value is None:
        return None
    if pa.types.is_struct(kind):
        if not isinstance(value, Mapping):
            return None
        return {kind.field(i).name: _fit(value.get(kind.field(i).name), kind.field(i).type)
                for i in range(kind.num_fields)}  # fmt: skip
    if pa.types.is_list(kind):
        return [_fit(item, kind.value_type) for item in value] if isinstance(value, list) else None
    if pa.types.is_large_string(kind) or (not isinstance(value, str) and pa.types.is_string(kind)):
        return json.dumps(value, ensure_ascii=False)
    if pa.types.is_string(kind):
        return value
    if pa.types.is_integer(kind):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value) if float(value).is_integer() else None
    if pa.types.is_floating(kind):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if pa.types.is_boolean(kind):
        return value if isinstance(value, bool) else None
    return value


def result_schema(kinds: Mapping[str, Kind]) -> Any:
    """The Arrow schema of a shard's results from the kinds of their fields (:func:`field_kinds`): the
    carried input fields first, as columns of their own, then ``id``, ``line``, ``task``, ``enrichment``
    and ``meta``."""
    pa, _ = pyarrow_modules()
    own = {
        "id": pa.string(),
        "line": pa.int64(),
        "task": pa.string(),
        "enrichment": arrow_type(kinds.get("enrichment")),
        "meta": arrow_type(kinds.get("meta")),
    }
    carried = kinds.get(CARRIED_FIELD)
    columns = carried[1] if isinstance(carried, tuple) and carried[0] == "struct" else {}
    return pa.schema(
        [pa.field(carried_column(name), arrow_type(kind)) for name, kind in columns.items()]
        + [pa.field(name, kind) for name, kind in own.items()]
    )


def field_kinds(lines: Iterator[dict[str, Any]]) -> dict[str, Kind]:
    """The kind of each field of ``lines`` (result lines), merged over them all."""
    kinds: dict[str, Kind] = {}
    for line in lines:
        for name, value in line.items():
            kinds[name] = merged(kinds.get(name), kind_of(value))
    return kinds


def carried_column(name: str) -> str:
    """A carried input field's column: its own name, or ``input_<name>`` where a result column has it."""
    return f"{CARRIED_FIELD}_{name}" if name in RESULT_COLUMNS else name


def dead_letter_schema() -> Any:
    """The Arrow schema of a shard's dead letters: their record is JSON text (it may be anything)."""
    pa, _ = pyarrow_modules()
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("line", pa.int64()),
            pa.field("task", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("detail", pa.string()),
            pa.field("attempts", pa.int64()),
            pa.field("record", pa.large_string()),  # JSON text: whatever the record held
            pa.field("raw", pa.string()),
        ]
    )


def write_parquet(
    read: Callable[[], Iterator[dict[str, Any]]], target: Any, *, dead_letters: bool = False
) -> int:
    """Write the lines ``read()`` yields (a shard's verified results, or its dead letters) to ``target`` (a
    path or a binary file) as Parquet, :data:`ROWS_PER_BATCH` rows per row group, in two reads: the columns'
    types, then the rows; return the rows."""
    pa, parquet = pyarrow_modules()
    schema = dead_letter_schema() if dead_letters else result_schema(field_kinds(read()))
    rows = 0
    with parquet.ParquetWriter(target, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        for line in read():
            row = dict(line)
            for name, value in (row.pop(CARRIED_FIELD, None) or {}).items():
                row[carried_column(name)] = value
            if row.get("id") is not None:
                row["id"] = str(row["id"])
            batch.append({column.name: _fit(row.get(column.name), column.type) for column in schema})
            if len(batch) == ROWS_PER_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows += len(batch)
                batch = []
        if batch or not rows:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            rows += len(batch)
    return rows


def parquet_rows(source: Any) -> Iterator[dict[str, Any]]:
    """The rows of the Parquet file ``source`` (a path or a binary file), a row group at a time."""
    _, parquet = pyarrow_modules()
    for batch in parquet.ParquetFile(source).iter_batches(batch_size=ROWS_PER_BATCH):
        yield from batch.to_pylist()
