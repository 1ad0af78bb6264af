"""Parquet in and out, on files written by pyarrow and by DuckDB, read back by DuckDB."""

from __future__ import annotations

import datetime
import decimal
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_etl_provider.formats.exceptions import UnreadableInput
from llm_etl_provider.formats.parquet import (
    declared_parquet,
    kind_of,
    merged,
    parquet_rows,
    parquet_to_jsonl,
    write_parquet,
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
