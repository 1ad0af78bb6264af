"""Parquet in and out, on files written by pyarrow and by DuckDB, read back by DuckDB."""

from __future__ import annotations

import datetime
import decimal
import functools
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_etl_provider.contract.answers import published_schema
from llm_etl_provider.formats.exceptions import UnreadableInput
from llm_etl_provider.formats.parquet import (
    OutputTypeError,
    carried_columns,
    declared_parquet,
    kind_of,
    merged,
    parquet_rows,
    parquet_to_jsonl,
    read_columns,
    schema_type,
    write_parquet,
    write_partitioned,
)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_pyarrow_file_becomes_one_json_line_per_row_in_order_over_row_groups(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "review": None if i == 3 else f"text {i} é",
            "score": float("nan") if i == 1 else i / 2,
            "at": datetime.datetime(2026, 1, 1, i, tzinfo=datetime.UTC),
            "day": datetime.date(2026, 2, i + 1),
            "price": decimal.Decimal("12345678901234567890.12"),
            "blob": b"\xff\x00" if i == 2 else b"plain",
            "tags": [] if i == 0 else ["a", None],
            "nested": {"a": i, "b": None},
        }
        for i in range(10)
    ]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=3)  # four row groups
    assert parquet_to_jsonl(tmp_path / "in.parquet", tmp_path / "rows.jsonl", rows_per_batch=2) == 10
    got = lines(tmp_path / "rows.jsonl")
    assert [row["id"] for row in got] == [f"r{i}" for i in range(10)]
    assert got[3]["review"] is None
    assert got[4]["review"] == "text 4 é"
    assert got[1]["score"] is None
    assert got[2]["score"] == 1.0
    assert got[5]["at"] == "2026-01-01T05:00:00+00:00"
    assert got[0]["day"] == "2026-02-01"
    assert got[0]["price"] == "12345678901234567890.12"  # no precision lost
    assert got[2]["blob"] == "/wA="
    assert got[0]["blob"] == "plain"
    assert got[0]["tags"] == []
    assert got[1]["tags"] == ["a", None]
    assert got[4]["nested"] == {"a": 4, "b": None}


def test_a_duckdb_file_with_nested_maps_decimals_and_nulls_is_read(tmp_path):
    duckdb.connect().execute(
        f"""COPY (SELECT i AS id, CASE WHEN i % 2 = 0 THEN NULL ELSE 'review ' || i END AS review,
        {{'a': i, 'b': [i, NULL]}} AS nested, CAST(i AS DECIMAL(10, 2)) AS price, MAP {{'k': i}} AS m,
        TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (i) HOUR AS at FROM range(5) t(i))
        TO '{tmp_path / "d.parquet"}' (FORMAT PARQUET)"""
    )
    assert parquet_to_jsonl(tmp_path / "d.parquet", tmp_path / "rows.jsonl") == 5
    got = lines(tmp_path / "rows.jsonl")
    assert got[1] == {
        "id": 1, "review": "review 1", "nested": {"a": 1, "b": [1, None]}, "price": "1.00", "m": {"k": 1},
        "at": "2026-01-01T01:00:00",
    }  # fmt: skip
    assert got[0]["review"] is None


@pytest.mark.parametrize("content", [b"", b"PAR1", b'{"id": 1}\n', b"PAR1" + b"\0" * 20 + b"PAR1"])
def test_a_file_that_is_not_parquet_is_refused_without_its_content(tmp_path, content):
    (tmp_path / "in.parquet").write_bytes(content)
    with pytest.raises(UnreadableInput, match="Parquet") as refused:
        parquet_to_jsonl(tmp_path / "in.parquet", tmp_path / "rows.jsonl")
    assert '"id"' not in str(refused.value)


def test_the_name_or_the_declaration_makes_an_input_parquet():
    assert declared_parquet("s3://b/in.parquet", "auto")
    assert declared_parquet("/data/in.PQ", "auto")
    assert declared_parquet("/data/in.bin", "parquet")
    assert not declared_parquet("/data/in.parquet", "jsonl")
    assert not declared_parquet("/data/in.jsonl", "auto")


def test_kinds_widen_integers_merge_objects_and_fall_back_to_json_text():
    assert merged(kind_of(1), kind_of(2.5)) == "number"
    assert merged(kind_of(None), kind_of("a")) == "string"
    assert merged(kind_of({"a": 1}), kind_of({"b": True})) == ("struct", {"a": "integer", "b": "boolean"})
    assert merged(kind_of([1]), kind_of([])) == ("list", "integer")
    assert merged(kind_of("a"), kind_of(1)) == "json"


def results(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_results_become_typed_columns_beside_the_carried_input_columns_read_back_by_duckdb(tmp_path):
    source = results(
        tmp_path,
        [
            {
                "id": i,
                "line": i + 1,
                "task": "sentiment",
                "enrichment": {"sentiment": "positive", "score": i if i else 0.5, "tags": ["a"] * i},
                "meta": {"model": "m", "latency_s": 0.1, "prompt_tokens": 9, "completion_tokens": 3},
                "input": {"review": f"r{i}", "rating": i, "task": "x", "odd": i if i % 2 else "s"},
            }
            for i in range(5)
        ],
    )
    with (tmp_path / "results.parquet").open("wb") as out:
        rows = write_parquet(lambda: iter(lines(source)), out)
    assert rows == 5
    connection = duckdb.connect()
    described = dict(
        connection.execute(f"DESCRIBE SELECT * FROM '{tmp_path / 'results.parquet'}'").fetchall()[i][:2]
        for i in range(9)
    )
    assert list(described) == [
        "review",
        "rating",
        "input_task",
        "odd",
        "id",
        "line",
        "task",
        "enrichment",
        "meta",
    ]
    assert described["rating"] == "BIGINT"
    assert described["odd"] == "VARCHAR"  # integers and text: JSON text
    assert described["enrichment"] == "STRUCT(sentiment VARCHAR, score DOUBLE, tags VARCHAR[])"
    got = connection.execute(
        f"SELECT id, review, input_task, enrichment.sentiment, enrichment.score, meta.prompt_tokens, odd "
        f"FROM '{tmp_path / 'results.parquet'}' ORDER BY line"
    ).fetchall()
    assert got[0] == ("0", "r0", "x", "positive", 0.5, 9, '"s"')
    assert got[3] == ("3", "r3", "x", "positive", 3.0, 9, "3")
    assert [row for row in parquet_rows(tmp_path / "results.parquet")][1]["enrichment"]["tags"] == ["a"]


def test_dead_letters_keep_their_record_as_json_text_and_an_empty_shard_has_its_columns(tmp_path):
    source = results(
        tmp_path,
        [{"id": 7, "line": 3, "task": "t", "reason": "invalid_output", "detail": "d", "attempts": 4,
          "record": {"id": 7, "review": "x"}, "raw": None}],
    )  # fmt: skip
    assert write_parquet(lambda: iter(lines(source)), tmp_path / "dead.parquet", dead_letters=True) == 1
    (row,) = pq.read_table(tmp_path / "dead.parquet").to_pylist()
    assert json.loads(row["record"]) == {"id": 7, "review": "x"}
    assert row["line"] == 3
    empty = results(tmp_path, [])
    assert write_parquet(lambda: iter(lines(empty)), tmp_path / "none.parquet") == 0
    assert "enrichment" in pq.read_schema(tmp_path / "none.parquet").names


def result_line(line: int, enrichment: dict, **meta) -> dict:
    return {
        "id": str(line),
        "line": line,
        "task": "custom",
        "enrichment": enrichment,
        "meta": {"model": "m", "latency_s": 0.1, "attempts": 1, **meta},
    }


def test_the_catalogue_schemas_become_structs_with_entity_spans():
    assert schema_type(published_schema("sentiment")) == pa.struct([("sentiment", pa.string())])
    assert schema_type(published_schema("tags", categories=["a"])) == pa.struct(
        [("tags", pa.list_(pa.string()))]
    )
    assert schema_type(published_schema("moderation")) == pa.struct(
        [("flagged", pa.bool_()), ("categories", pa.list_(pa.string()))]
    )
    entity = pa.struct(
        [("text", pa.string()), ("type", pa.string()), ("start", pa.int64()), ("end", pa.int64())]
    )
    assert schema_type(published_schema("entities", entity_types=["drug"])) == pa.struct(
        [("entities", pa.list_(entity))]
    )
    assert schema_type(published_schema("custom")) == pa.struct([("text", pa.string())])


def test_a_custom_schema_types_unions_references_enums_and_constants():
    schema = {
        "type": "object",
        "$defs": {
            "dose": {
                "type": "object",
                "properties": {"mg": {"type": "number"}},
                "additionalProperties": False,
            },
            "loop": {"$ref": "#/$defs/loop"},
        },
        "properties": {
            "score": {"type": ["integer", "null"]},
            "ratio": {"type": ["integer", "number"]},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "maybe": {"oneOf": [{"type": "null"}, {"type": "boolean"}]},
            "dose": {"$ref": "#/$defs/dose"},
            "loop": {"$ref": "#/$defs/loop"},
            "elsewhere": {"$ref": "other.json#/x"},
            "level": {"enum": [1, 2, None]},
            "kind": {"const": "x"},
            "anything": {},
            "free": {"type": "object"},
            "rows": {"type": "array"},
        },
        "additionalProperties": False,
    }
    assert schema_type(schema) == pa.struct([
        ("score", pa.int64()), ("ratio", pa.float64()), ("either", pa.large_string()),
        ("maybe", pa.bool_()), ("dose", pa.struct([("mg", pa.float64())])), ("loop", pa.large_string()),
        ("elsewhere", pa.large_string()), ("level", pa.int64()), ("kind", pa.string()),
        ("anything", pa.large_string()), ("free", pa.large_string()), ("rows", pa.list_(pa.large_string())),
    ])  # fmt: skip


def test_shards_typed_from_one_schema_have_the_same_columns_whatever_their_values(tmp_path):
    """Without the schema, a shard whose answers left a field null would type it as text, another as a
    number: a reader of the whole output (one glob, no union by name) would refuse them."""
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": ["number", "null"]},
            "labels": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["score", "labels"],
        "additionalProperties": False,
    }
    shards = {
        "shard-00000": [result_line(1, {"score": None, "labels": []}, prompt_tokens=None)],
        "shard-00001": [result_line(2, {"score": 3, "labels": ["x"]}, prompt_tokens=5, reused=True)],
        "shard-00002": [],
    }
    for name, rows in shards.items():
        (tmp_path / name).mkdir()
        write_parquet(
            functools.partial(iter, rows), tmp_path / name / "results.parquet", enrichment_schema=schema
        )
    schemas = {pq.read_schema(tmp_path / name / "results.parquet") for name in shards}
    assert len(schemas) == 1
    got = (
        duckdb.connect()
        .execute(
            f"SELECT line, enrichment.score, enrichment.labels, meta.prompt_tokens, meta.reused "
            f"FROM read_parquet('{tmp_path}/*/results.parquet') ORDER BY line"
        )
        .fetchall()
    )
    assert got == [(1, None, [], None, None), (2, 3.0, ["x"], 5, True)]


def test_properties_a_schema_allows_beyond_those_it_names_are_kept_as_json_text(tmp_path):
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}  # additionalProperties: any
    rows = [
        result_line(1, {"score": 1, "why": "because", "n": [1]}),
        result_line(2, {"score": 2}),
    ]
    rows[0]["input"] = {"note": {"_additional": "the input's own"}}
    rows[1]["input"] = {"note": {"_additional": "kept"}}
    write_parquet(lambda: iter(rows), tmp_path / "r.parquet", enrichment_schema=schema)
    first, second = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert first["enrichment"]["score"] == 1
    assert json.loads(first["enrichment"]["_additional"]) == {"why": "because", "n": [1]}
    assert second["enrichment"] == {"score": 2, "_additional": None}
    assert first["note"] == {"_additional": "the input's own"}  # a value's own field of the name is its own


def test_carried_columns_come_back_with_the_input_columns_types_and_values(tmp_path):
    """Through JSON (what the worker reads and writes) and back: timestamps, dates, times, durations and
    decimals are the input's again; binary and maps, which JSON does not give back exactly, are text."""
    utc, moment = datetime.UTC, datetime.datetime
    table = pa.table({
        "id": pa.array(["a", "b"]),
        "seen": pa.array([moment(2026, 1, 2, 3, 4, 5, 6, tzinfo=utc), None], pa.timestamp("us", "UTC")),
        "naive": pa.array([moment(2026, 1, 2), moment(1999, 12, 31, 23)], pa.timestamp("ms")),
        "day": pa.array([datetime.date(2026, 2, 28), None], pa.date32()),
        "at": pa.array([datetime.time(12, 30, 0, 500), None], pa.time64("us")),
        "took": pa.array([datetime.timedelta(seconds=90), None], pa.duration("s")),
        "price": pa.array([decimal.Decimal("12345678901234.56"), None], pa.decimal128(18, 2)),
        "blob": pa.array([b"\x00\xff", b"text"], pa.binary()),
        "codes": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
        "kind": pa.array(["x", "y"]).dictionary_encode(),
        "visit": pa.array([{"when": datetime.date(2026, 1, 1), "notes": ["n"]}, None],
                          pa.struct([("when", pa.date32()), ("notes", pa.list_(pa.string()))])),
        "unused": pa.array([1, 2]),
    })  # fmt: skip
    source = tmp_path / "input.parquet"
    pq.write_table(table, source)
    rows = tmp_path / "rows.jsonl"
    parquet_to_jsonl(source, rows)
    carried = carried_columns(source, ("*",))
    results = [
        {**result_line(i + 1, {"sentiment": "neutral"}), "input": row} for i, row in enumerate(lines(rows))
    ]
    write_parquet(functools.partial(iter, results), tmp_path / "out.parquet", carried=carried)
    out = pq.read_table(tmp_path / "out.parquet")
    for name in ("seen", "naive", "day", "at", "took", "price", "visit", "unused"):
        assert out.schema.field(name).type == table.schema.field(name).type, name
        assert out.column(name).to_pylist() == table.column(name).to_pylist(), name
    assert out.schema.field("kind").type == pa.string()
    assert out.column("kind").to_pylist() == ["x", "y"]
    assert out.schema.field("blob").type == pa.large_string()
    assert out.schema.field("input_id").type == pa.string()  # a carried column named as a result column
    assert json.loads(out.column("codes").to_pylist()[0]) == {"k": 1}
    # only the columns carried are typed by the input; nothing carried, nothing to type
    seen = carried_columns(source, ("seen", "absent"))
    assert seen is not None
    only = read_columns(seen)
    assert only.names == ["seen"]
    assert carried_columns(source, None) is None


def test_what_json_does_not_type_reads_back_as_it_was_written(tmp_path):
    """Review findings: an input's large_string text stays text; a millisecond timestamp keeps its
    fraction; a nanosecond one reads the same with or without pandas (microseconds); JSON text and the
    properties a schema allows beyond its own read back as the values they were (an incremental run reuses
    them); a number no double holds, or an integer past int64, is refused clearly, not written wrong."""
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, 123000)
    table = pa.table({
        "note": pa.array(["great", None], pa.large_string()),
        "at": pa.array([moment, None], pa.timestamp("ms")),
        "fine": pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns")),
    })  # fmt: skip
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    parquet_to_jsonl(source, tmp_path / "rows.jsonl")
    first = lines(tmp_path / "rows.jsonl")[0]
    assert first["fine"] == "2023-11-14T22:13:20.123456"  # nanoseconds dropped, the same everywhere
    schema = {"type": "object", "properties": {"score": {"type": "integer"}, "free": {"type": "object"}}}
    enrichment = {"score": 1, "free": {"a": [1, "x"]}, "why": "because"}
    rows = [{**result_line(1, enrichment), "input": first}]
    carried = carried_columns(source, ("*",))
    write_parquet(
        functools.partial(iter, rows), tmp_path / "out.parquet", enrichment_schema=schema, carried=carried
    )
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()[0]
    assert (out["note"], out["at"]) == ("great", moment)
    (back,) = parquet_rows(tmp_path / "out.parquet")
    assert back["enrichment"] == enrichment
    assert back["meta"]["model"] == "m"
    assert "_additional" not in back["meta"]  # meta is closed: no field for more
    for value, kind in ((10**400, "number"), (2**63, "integer")):
        line = result_line(2, {"v": value})
        with pytest.raises(OutputTypeError, match=r"does not fit its Parquet column.*output_format=jsonl"):
            write_parquet(
                functools.partial(iter, [line]), tmp_path / "bad.parquet",
                enrichment_schema={"type": "object", "properties": {"v": {"type": kind}}},
            )  # fmt: skip


def test_a_declared_type_wins_over_alternatives_and_an_empty_shard_has_no_partition(tmp_path):
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string", "oneOf": [{"pattern": "x"}]}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        "additionalProperties": False,
    }
    assert schema_type(schema) == pa.struct([("a", pa.string()), ("b", pa.string())])
    assert (
        write_partitioned(
            functools.partial(iter, []), tmp_path / "p", "enrichment.a", enrichment_schema=schema
        )
        == {}
    )
