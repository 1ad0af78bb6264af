"""Parquet in and out: the worker reads and writes JSON lines (and reads an object transport's Parquet range
with :func:`parquet_to_jsonl`).

In: :func:`parquet_to_jsonl` turns a Parquet file into JSON lines, row ``n`` (1-based, in file order) on line
``n``, reading one record batch at a time: the stage cuts, validates and stages those lines as any JSONL
input, and a result's ``line`` is its input row. Values become JSON as a warehouse would export them:
timestamps, dates and times in ISO 8601, decimals as text (no precision lost), binary as text where it is
UTF-8 (else base64), maps as objects, NaN and infinities as null.

Out: :func:`write_parquet` turns a shard's verified result or dead-letter lines into a Parquet file, a row
group at a time: the enrichment and its meta as typed structs, the carried input fields as columns of their
own beside them. The enrichment's and the meta's types come from their JSON schemas (:func:`schema_type`), a
carried column's from a Parquet input's own (:func:`carried_columns`), so every shard has the same
columns; a JSON lines or CSV input's are those of its values (:func:`kind_of`), merged over the whole input
by the stage (:func:`kinds_as_columns`), or over the shard where no stage gave them: integers widen to
numbers, objects to the union of their fields, and values of no common type are JSON text. A ``large_string``
column always holds JSON text, which :func:`parquet_rows` reads back as the value it was.

Needs pyarrow: the ``parquet`` extra (``pip install 'llm-etl-provider[parquet]'``).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_etl_provider.contract.answers import META_SCHEMA, RESULT_FIELDS
from llm_etl_provider.contract.invocation import ALL_FIELDS, AUTO_FORMAT, CARRIED_FIELD
from llm_etl_provider.formats.exceptions import UnreadableInput

PARQUET_FORMAT = "parquet"
PARQUET_SUFFIXES = (".parquet", ".pq")
MAGIC = b"PAR1"
# a struct's field for the properties its schema does not name but allows: JSON text
ADDITIONAL = "_additional"
_ADDITIONAL_MARK = {b"llm_etl": b"additional properties"}
ROWS_PER_BATCH = 4096  # rows converted at once: memory is bounded by a batch, not by the file
MAX_PARTITIONS = 1024  # a partitioned shard's folders at most: more is a column that partitions nothing


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


def parquet_to_jsonl(
    source: Path,
    target: Path,
    *,
    rows_per_batch: int = ROWS_PER_BATCH,
    row_groups: Sequence[int] | None = None,
) -> int:
    """Write each row of the Parquet file ``source`` (of its ``row_groups`` only, where given) as a JSON
    line of ``target``; return the rows. A file without Parquet's magic bytes at both ends, or that pyarrow
    cannot read, is refused (:class:`UnreadableInput`)."""
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
            groups = list(row_groups) if row_groups is not None else None
            json_schema = _microseconds(reader.schema_arrow)
            for batch in reader.iter_batches(batch_size=rows_per_batch, row_groups=groups):
                if json_schema is not None:
                    batch = batch.cast(json_schema, safe=False)
                for row in batch.to_pylist():
                    out.write(json.dumps(_json_row(row), ensure_ascii=False, allow_nan=False) + "\n")
                    rows += 1
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UnreadableInput(f"cannot read it as Parquet ({type(exc).__name__}: {exc})") from None
    return rows


def _microseconds(schema: Any) -> Any:
    """``schema`` with its nanosecond timestamps, times and durations in microseconds (None where it has
    none): Python's datetime holds microseconds, and the stage and the worker (with or without pandas) must
    read the same JSON; the nanoseconds are dropped."""
    pa, _ = pyarrow_modules()

    def micro(kind: Any) -> Any:
        types = pa.types
        if types.is_timestamp(kind) and kind.unit == "ns":
            return pa.timestamp("us", kind.tz)
        if types.is_time64(kind) and kind.unit == "ns":
            return pa.time64("us")
        if types.is_duration(kind) and kind.unit == "ns":
            return pa.duration("us")
        if types.is_struct(kind):
            return pa.struct(
                [kind.field(i).with_type(micro(kind.field(i).type)) for i in range(kind.num_fields)]
            )
        if types.is_list(kind) or types.is_large_list(kind):
            item = kind.value_field.with_type(micro(kind.value_type))
            return pa.list_(item) if types.is_list(kind) else pa.large_list(item)
        if types.is_map(kind):
            return pa.map_(micro(kind.key_type), micro(kind.item_type))
        return kind

    converted = pa.schema([field.with_type(micro(field.type)) for field in schema])
    return None if converted.equals(schema) else converted


@dataclass(frozen=True)
class RowGroupRange:
    """Consecutive row groups of a Parquet file: one shard of the object transport.

    :param groups: the row groups [first, stop)
    :param start: the first byte of their column chunks
    :param end: the byte after their last
    :param first_row: the file's row (1-based, the input line) their first row is
    :param rows: how many rows they hold
    """

    groups: tuple[int, int]
    start: int
    end: int
    first_row: int
    rows: int


def plan_row_groups(source: Path, pods: int) -> tuple[list[RowGroupRange], int]:
    """Cut the Parquet file ``source`` into at most ``pods`` runs of whole row groups of about equal rows;
    return them and where its footer starts (the metadata every run is read with). A file of fewer row
    groups than ``pods`` makes fewer runs."""
    _, parquet = pyarrow_modules()
    metadata = parquet.ParquetFile(source).metadata
    spans = []
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        starts, ends = [], []
        for column in range(group.num_columns):
            chunk = group.column(column)
            first = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                first = min(first, chunk.dictionary_page_offset)
            starts.append(first)
            ends.append(first + chunk.total_compressed_size)
        spans.append((min(starts), max(ends), group.num_rows))
    total = sum(rows for _, _, rows in spans)
    runs: list[RowGroupRange] = []
    first_group, rows_before, cumulative = 0, 0, 0
    for index, (_, _, rows) in enumerate(spans):
        cumulative += rows
        if index == len(spans) - 1 or cumulative * pods >= total * (len(runs) + 1):
            chosen = spans[first_group : index + 1]
            runs.append(RowGroupRange(
                groups=(first_group, index + 1), start=min(s for s, _, _ in chosen),
                end=max(e for _, e, _ in chosen), first_row=rows_before + 1, rows=cumulative - rows_before,
            ))  # fmt: skip
            first_group, rows_before = index + 1, cumulative
    size = source.stat().st_size
    with source.open("rb") as handle:
        handle.seek(size - 8)
        footer_length = int.from_bytes(handle.read(4), "little")
    return runs, size - 8 - footer_length


def carried_columns(source: Path, carry: tuple[str, ...] | None) -> str | None:
    """The Arrow types of the Parquet file ``source``'s columns that ``carry`` (the worker's
    ``carry_fields``) names, or of all for ``*``, as a serialized Arrow schema (base64), for the output to
    give the carried columns the input's types (:func:`result_schema`); None where nothing is carried. A
    type that JSON does not carry back exactly (binary, maps) is JSON text."""
    if not carry:
        return None
    pa, parquet = pyarrow_modules()
    schema = parquet.read_schema(source)
    kept = [field for field in schema if ALL_FIELDS in carry or field.name in carry]
    return _serialized(pa.schema([pa.field(field.name, _carried_type(field.type)) for field in kept]))


def _carried_type(kind: Any) -> Any:
    """The Arrow type a carried input value of type ``kind`` is written back as, from its JSON
    (:func:`_json_value`): the same, but where the JSON loses what it was."""
    pa, _ = pyarrow_modules()
    types = pa.types
    if types.is_dictionary(kind):
        return _carried_type(kind.value_type)
    if types.is_struct(kind):
        return pa.struct([pa.field(kind.field(i).name, _carried_type(kind.field(i).type))
                          for i in range(kind.num_fields)])  # fmt: skip
    if types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind):
        return pa.list_(_carried_type(kind.value_type))
    if types.is_float16(kind):
        return pa.float32()
    if types.is_large_string(kind) or types.is_string_view(kind):
        return pa.string()  # a large_string column of ours holds JSON text: the input's text is text
    kept = (types.is_boolean, types.is_integer, types.is_floating, types.is_string, types.is_timestamp,
            types.is_date, types.is_time, types.is_duration, types.is_decimal)  # fmt: skip
    return kind if any(is_kept(kind) for is_kept in kept) else pa.large_string()


def kinds_as_columns(kinds: Mapping[str, Kind]) -> str | None:
    """The Arrow types of carried fields of the ``kinds`` their values had over a whole JSON lines or CSV
    input (:func:`kind_of`), serialized as :func:`carried_columns` serializes a Parquet input's; None
    where pyarrow is not installed (a JSON lines output needs none)."""
    try:
        pa, _ = pyarrow_modules()
    except UnreadableInput:
        return None
    return _serialized(pa.schema([pa.field(name, arrow_type(kind)) for name, kind in kinds.items()]))


def _serialized(columns: Any) -> str:
    """An Arrow schema as text a shard descriptor holds (:func:`read_columns` reads it)."""
    return base64.b64encode(columns.serialize().to_pybytes()).decode("ascii")


def read_columns(serialized: str) -> Any:
    """The Arrow schema that :func:`carried_columns` or :func:`kinds_as_columns` serialized."""
    pa, _ = pyarrow_modules()
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(serialized)))


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


_SCALAR_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))  # bool first


def _scalar_type(value: Any) -> str | None:
    """The JSON schema type of a scalar ``value`` (None for anything else)."""
    return next((name for kind, name in _SCALAR_TYPES if isinstance(value, kind)), None)


def kind_of(value: Any) -> Kind:
    """The JSON ``value``'s kind."""
    if value is None:
        return None
    if (scalar := _scalar_type(value)) is not None:
        return scalar
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
    return pa.string() if kind is None else _scalar_arrow_type(str(kind))


def _scalar_arrow_type(kind: str) -> Any:
    """The Arrow type of a JSON scalar type (``integer``, ``number``, ``boolean``, ``string``); JSON text
    (``large_string``) for any other kind."""
    pa, _ = pyarrow_modules()
    scalars = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(), "string": pa.string()}
    return scalars.get(kind, pa.large_string())


def schema_type(schema: Any, *, root: Any = None, following: tuple[str, ...] = ()) -> Any:
    """The Arrow type of the values the JSON schema ``schema`` admits: a struct for an object with
    ``properties`` (in their order), a list for an array with ``items``, the scalar of one type (``null``
    beside it makes the column nullable, as every column is); JSON text (``large_string``) where the values
    may be of several types, or of none declared (an object without properties, ``{}``). Local ``$ref``
    (``#/$defs/...``) are followed; one that refers back to itself is JSON text. An object that may hold
    properties beyond those named (``additionalProperties`` not false) has one more field,
    :data:`ADDITIONAL`: them, as a JSON object's text (null where there are none)."""
    pa, _ = pyarrow_modules()
    root = schema if root is None else root
    if not isinstance(schema, Mapping):
        return pa.large_string()
    if isinstance(reference := schema.get("$ref"), str):
        target = _local_reference(root, reference)
        if target is None or reference in following:
            return pa.large_string()
        return schema_type(target, root=root, following=(*following, reference))
    for alternatives in ("anyOf", "oneOf"):  # alternatives decide the type only where none is declared
        if not _declared_types(schema) and isinstance(options := schema.get(alternatives), list):
            typed = [schema_type(option, root=root, following=following)
                     for option in options if _declared_types(option) != {"null"}]  # fmt: skip
            return typed[0] if typed and all(t == typed[0] for t in typed) else pa.large_string()
    declared = _declared_types(schema) - {"null"}
    if not declared and "const" in schema:
        declared = {_json_type(schema["const"])}
    if not declared and isinstance(schema.get("enum"), list):
        declared = {_json_type(value) for value in schema["enum"] if value is not None}
    if declared == {"integer", "number"}:
        declared = {"number"}
    if len(declared) != 1:
        return pa.large_string()
    (kind,) = declared
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or not properties or ADDITIONAL in properties:
            return pa.large_string()
        fields = [pa.field(str(name), schema_type(sub, root=root, following=following))
                  for name, sub in properties.items()]  # fmt: skip
        if schema.get("additionalProperties") is not False or "patternProperties" in schema:
            # what else the object may hold; marked, as a value's own field of the name is not it
            fields.append(pa.field(ADDITIONAL, pa.large_string(), metadata=_ADDITIONAL_MARK))
        return pa.struct(fields)
    if kind == "array":
        items = schema.get("items")
        return pa.list_(schema_type(items, root=root, following=following) if isinstance(items, Mapping)
                        else pa.large_string())  # fmt: skip
    return _scalar_arrow_type(kind)


def _declared_types(schema: Any) -> set[str]:
    declared = schema.get("type") if isinstance(schema, Mapping) else None
    if isinstance(declared, str):
        return {declared}
    return {str(name) for name in declared} if isinstance(declared, list) else set()


def _json_type(value: Any) -> str:
    """The JSON schema type of any JSON ``value``."""
    if (scalar := _scalar_type(value)) is not None:
        return scalar
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "null"


def _local_reference(root: Any, reference: str) -> Any:
    """What ``#/a/b`` names in ``root``; None for another document's or a part that is not there."""
    if not reference.startswith("#"):
        return None
    target = root
    for part in reference[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, Mapping) or part not in target:
            return None
        target = target[part]
    return target


def _holds_additional(fields: Sequence[Any]) -> bool:
    """Whether a struct's ``fields`` end with :data:`ADDITIONAL`, the one :func:`schema_type` adds (a
    field a value has of that name is not it)."""
    return bool(fields) and fields[-1].metadata == _ADDITIONAL_MARK


def _fit(value: Any, kind: Any) -> Any:
    """``value`` (from JSON) shaped for the Arrow type ``kind``: JSON text for ``large_string``, text where
    the type is a string and the value is not one."""
    pa, _ = pyarrow_modules()
    if value is None:
        return None
    if pa.types.is_struct(kind):
        if not isinstance(value, Mapping):
            return None
        fields = [kind.field(i) for i in range(kind.num_fields)]
        fitted = {field.name: _fit(value.get(field.name), field.type) for field in fields}
        if _holds_additional(fields):
            more = {name: item for name, item in value.items() if name not in fitted}
            fitted[ADDITIONAL] = json.dumps(more, ensure_ascii=False) if more else None
        return fitted
    if pa.types.is_list(kind):
        return [_fit(item, kind.value_type) for item in value] if isinstance(value, list) else None
    if pa.types.is_large_string(kind) or (not isinstance(value, str) and pa.types.is_string(kind)):
        return json.dumps(value, ensure_ascii=False)
    if pa.types.is_string(kind):
        return value
    if pa.types.is_integer(kind):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not value.is_integer():
            return None
        return int(value)
    if pa.types.is_floating(kind):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        try:
            return float(value)
        except OverflowError:  # an integer JSON allows and a double does not hold
            raise ValueError(f"the number {value} is beyond what a Parquet double holds") from None
    if pa.types.is_boolean(kind):
        return value if isinstance(value, bool) else None
    return _from_json_text(value, kind)


def _from_json_text(value: Any, kind: Any) -> Any:
    """A carried input value that JSON holds as text or seconds (:func:`_json_value`) as the Arrow type
    ``kind`` of its input column; None where it is not one."""
    pa, _ = pyarrow_modules()
    types = pa.types
    readers: list[tuple[Callable[[Any], bool], Callable[[str], Any]]] = [
        (types.is_timestamp, datetime.datetime.fromisoformat),
        (types.is_date, datetime.date.fromisoformat),
        (types.is_time, datetime.time.fromisoformat),
        (types.is_decimal, decimal.Decimal),
    ]
    for is_type, read in readers:
        if not is_type(kind):
            continue
        if not isinstance(value, str):
            return None
        try:
            return read(value)  # what _json_value wrote: isoformat, a decimal's text
        except (ValueError, ArithmeticError):
            try:  # Arrow's own parser: other ISO 8601 spellings
                return pa.scalar(value, pa.string()).cast(kind).as_py()
            except (ValueError, pa.ArrowException):
                return None
    if types.is_duration(kind):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return datetime.timedelta(seconds=value) if number else None
    return value


def result_schema(
    kinds: Mapping[str, Kind], enrichment: Mapping[str, Any] | None = None, carried: Any = None
) -> Any:
    """The Arrow schema of a shard's results: the carried input fields first, as columns of their own, then
    ``id``, ``line``, ``task``, ``enrichment`` and ``meta``. The enrichment's type is that of its JSON schema
    ``enrichment`` (the task's, :func:`~llm_etl_provider.contract.answers.published_schema`), the meta's
    that of :data:`~llm_etl_provider.contract.answers.META_SCHEMA`: the same in every shard. A carried
    field's is its input column's in ``carried`` (an Arrow schema: :func:`carried_columns`); the other
    carried fields', and the enrichment's without a schema, are those of the values (:func:`field_kinds`)."""
    pa, _ = pyarrow_modules()
    own = {
        "id": pa.string(),
        "line": pa.int64(),
        "task": pa.string(),
        "enrichment": (
            schema_type(enrichment) if enrichment is not None else arrow_type(kinds.get("enrichment"))
        ),
        "meta": schema_type(META_SCHEMA),
    }
    seen = kinds.get(CARRIED_FIELD)
    columns: dict[str, Any] = {field.name: field.type for field in carried} if carried is not None else {}
    for name, kind in (seen[1] if isinstance(seen, tuple) and seen[0] == "struct" else {}).items():
        columns.setdefault(name, arrow_type(kind))  # a field the input's schema does not type
    return pa.schema(
        [pa.field(carried_column(name), kind) for name, kind in columns.items()]
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
    return f"{CARRIED_FIELD}_{name}" if name in RESULT_FIELDS else name


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
    read: Callable[[], Iterator[dict[str, Any]]],
    target: Any,
    *,
    dead_letters: bool = False,
    enrichment_schema: Mapping[str, Any] | None = None,
    carried: str | None = None,
) -> int:
    """Write the lines ``read()`` yields (a shard's verified results, or its dead letters) to ``target`` (a
    path or a binary file) as Parquet, :data:`ROWS_PER_BATCH` rows per row group, in two reads: the columns'
    types (:func:`result_schema`, the enrichment's from ``enrichment_schema`` and the carried columns' from
    ``carried``, :func:`carried_columns`, where given), then the rows; return the rows."""
    pa, parquet = pyarrow_modules()
    schema = dead_letter_schema() if dead_letters else _results_schema(read, enrichment_schema, carried)
    rows = 0
    try:
        with parquet.ParquetWriter(target, schema, compression="zstd") as writer:
            for table in _tables(read(), schema):
                writer.write_table(table)
                rows += table.num_rows
    except (ValueError, OverflowError, pa.ArrowException) as exc:
        raise OutputTypeError(_unwritable(exc)) from None
    return rows


class OutputTypeError(ValueError):
    """A value the results' columns cannot hold as Parquet."""


def _unwritable(exc: BaseException) -> str:
    return (
        f"a value does not fit its Parquet column ({type(exc).__name__}: {exc}); output_format=jsonl "
        "publishes every value as it is"
    )


def _results_schema(
    read: Callable[[], Iterator[dict[str, Any]]],
    enrichment_schema: Mapping[str, Any] | None,
    carried: str | None,
) -> Any:
    """The results' columns (:func:`result_schema`), from a first read of the lines."""
    return result_schema(field_kinds(read()), enrichment_schema, read_columns(carried) if carried else None)


def write_partitioned(
    read: Callable[[], Iterator[dict[str, Any]]],
    folder: Path,
    partition_by: str,
    *,
    enrichment_schema: Mapping[str, Any] | None = None,
    carried: str | None = None,
    max_partitions: int = MAX_PARTITIONS,
) -> dict[str, int]:
    """Write a shard's verified results under the local ``folder`` as a Hive-partitioned dataset,
    ``<column>=<value>/part-<n>.parquet`` (the value URI-escaped, null as ``__HIVE_DEFAULT_PARTITION__``),
    the columns as :func:`write_parquet` types them but the partition column, which is in the path; return
    each file's path under ``folder`` and its rows.

    ``partition_by`` names a column of the results (a carried input column by its output name, ``task``)
    or a field of the enrichment (``enrichment.<field>``, as a column of that name). Raises
    :class:`PartitionError` where it names no scalar column, or has more than ``max_partitions`` values."""
    pa, _ = pyarrow_modules()
    from pyarrow import dataset

    schema = _results_schema(read, enrichment_schema, carried)
    if not any(True for _ in read()):
        return {}  # nothing to partition: every record of the shard is a dead letter
    column, field = _partition_column(schema, partition_by)
    if field.name not in schema.names:
        schema = schema.append(field)
    if pa.types.is_nested(field.type):
        raise PartitionError(
            f"partition_by {partition_by!r} is a {field.type} column: a partition is one value"
        )
    written: dict[str, int] = {}

    def visited(file: Any) -> None:
        written[str(Path(file.path).relative_to(folder))] = file.metadata.num_rows

    tables = _tables(read(), schema, derived=column)
    try:
        dataset.write_dataset(
            pa.RecordBatchReader.from_batches(schema, (b for t in tables for b in t.to_batches())),
            folder,
            format="parquet",
            partitioning=dataset.partitioning(pa.schema([field]), flavor="hive"),
            basename_template="part-{i}.parquet",
            max_partitions=max_partitions,
            max_rows_per_group=ROWS_PER_BATCH,
            file_options=dataset.ParquetFileFormat().make_write_options(compression="zstd"),
            existing_data_behavior="error",
            file_visitor=visited,
        )
    except (ValueError, OverflowError, pa.ArrowException) as exc:
        if isinstance(exc, pa.ArrowInvalid) and "partitions" in str(exc):
            raise PartitionError(
                f"partition_by {partition_by!r} has more than {max_partitions} values in one shard: "
                "partition by a column of fewer values"
            ) from None
        raise OutputTypeError(_unwritable(exc)) from None
    return written


class PartitionError(ValueError):
    """The partition column is not one the results can be partitioned by."""


def _partition_column(schema: Any, partition_by: str) -> tuple[str | None, Any]:
    """The partition field (an enrichment field's, named by its own name) and, for an enrichment field,
    the field it is derived from."""
    pa, _ = pyarrow_modules()
    name = partition_by.strip()
    if name.startswith("enrichment."):
        leaf = name.removeprefix("enrichment.")
        enrichment = schema.field("enrichment").type
        if not pa.types.is_struct(enrichment) or enrichment.get_field_index(leaf) < 0:
            raise PartitionError(f"partition_by {partition_by!r}: the enrichment has no field {leaf!r}")
        if leaf in schema.names:
            raise PartitionError(f"partition_by {partition_by!r}: the results have a column {leaf!r} already")
        return leaf, pa.field(leaf, enrichment.field(leaf).type)
    if name not in schema.names or name in ("enrichment", "meta"):
        carried = [column for column in schema.names if column not in RESULT_FIELDS]
        raise PartitionError(
            f"partition_by {partition_by!r} is not a column of the results: choose a carried input column "
            f"({', '.join(carried) or 'none carried: set carry_fields'}), task, or enrichment.<field>"
        )
    return None, schema.field(name)


def _tables(lines: Iterator[dict[str, Any]], schema: Any, *, derived: str | None = None) -> Iterator[Any]:
    """The lines as tables of :data:`ROWS_PER_BATCH` rows of ``schema`` (at least one, empty for none):
    carried fields as columns of their own, ``derived`` (an enrichment field) as a column too."""
    pa, _ = pyarrow_modules()
    batch: list[dict[str, Any]] = []
    sent = False
    for line in lines:
        row = dict(line)
        for name, value in (row.pop(CARRIED_FIELD, None) or {}).items():
            row[carried_column(name)] = value
        if row.get("id") is not None:
            row["id"] = str(row["id"])
        if derived is not None and isinstance(row.get("enrichment"), Mapping):
            row[derived] = row["enrichment"].get(derived)
        batch.append({column.name: _fit(row.get(column.name), column.type) for column in schema})
        if len(batch) == ROWS_PER_BATCH:
            yield pa.Table.from_pylist(batch, schema=schema)
            sent, batch = True, []
    if batch or not sent:
        yield pa.Table.from_pylist(batch, schema=schema)


def parquet_rows(source: Any) -> Iterator[dict[str, Any]]:
    """The rows of the Parquet file ``source`` (a path or a binary file, one this module wrote), a row group
    at a time, each value as the line it was written from held it: JSON text (``large_string``) parsed, a
    struct's :data:`ADDITIONAL` properties back among its own."""
    _, parquet = pyarrow_modules()
    reader = parquet.ParquetFile(source)
    schema = reader.schema_arrow
    for batch in reader.iter_batches(batch_size=ROWS_PER_BATCH):
        for row in batch.to_pylist():
            yield {field.name: _restored(row.get(field.name), field.type) for field in schema}


def _restored(value: Any, kind: Any) -> Any:
    """A value read from a column of type ``kind`` as :func:`_fit` found it."""
    pa, _ = pyarrow_modules()
    if value is None:
        return None
    if pa.types.is_large_string(kind):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if pa.types.is_struct(kind) and isinstance(value, dict):
        fields = [kind.field(i) for i in range(kind.num_fields)]
        additional = _holds_additional(fields)
        own = fields[:-1] if additional else fields
        restored = {f.name: _restored(value.get(f.name), f.type) for f in own}
        if additional and isinstance(value.get(ADDITIONAL), str):
            more = json.loads(value[ADDITIONAL])
            restored.update({name: item for name, item in more.items() if name not in restored})
        return restored
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and isinstance(value, list):
        return [_restored(item, kind.value_type) for item in value]
    return value
