"""Bad input through the whole pipeline (stage → worker with the real model → extraction, local mode).

Every input line is accounted for: a result, a dead letter with a reason and its input line, or a reported
blank line. The run fails only where the input as a whole is unusable, with an error naming file and line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from llm_etl_provider.exceptions import StagingError
from tests.integration.pipeline import stage_enrich_extract


def review(n: int, text: str = "It helped my headaches a lot.") -> str:
    return json.dumps({"id": f"r{n}", "review": text})


def run_pipeline(tmp_path: Path, monkeypatch, server, name: str, data: bytes, **stage: Any) -> dict[str, Any]:
    source = tmp_path / name
    source.write_bytes(data)
    out = tmp_path / "out"
    shards = stage_enrich_extract(tmp_path, monkeypatch, server, str(source), str(out), **stage)
    results = [
        json.loads(line) for p in sorted(out.rglob("results.jsonl")) for line in p.read_text().splitlines()
    ]
    dead = [
        json.loads(line)
        for p in sorted(out.rglob("dead_letter*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    manifests = [json.loads(p.read_text()) for p in sorted(out.rglob("manifest.json"))]
    return {"shards": shards, "results": results, "dead": dead, "manifests": manifests}


def accounted(outcome: dict[str, Any]) -> dict[int, str]:
    """Input line → what became of it (``result`` or the dead letter's reason); each line at most once."""
    lines: dict[int, str] = {}
    for item, what in [(r, "result") for r in outcome["results"]] + [
        (d, d["reason"]) for d in outcome["dead"]
    ]:
        assert item["line"] not in lines, f"line {item['line']} accounted for twice"
        lines[item["line"]] = what
    return lines


def test_a_jsonl_file_with_every_kind_of_bad_line(tmp_path, monkeypatch, llama_server):
    lines = [
        "\ufeff" + review(1),  # a BOM before the first record
        review(2) + "\r",  # CRLF line end
        "",  # blank
        '{"id": "r4", "review": "unterminated',  # malformed JSON
        '["not", "an", "object"]',
        json.dumps({"review": "no id at all"}),
        json.dumps({"id": "r7", "text": "no review field"}),
        "   ",  # whitespace only
        json.dumps({"id": "r9", "review": "x" * (5 << 20)}),  # a 5 MB record
        review(10),
    ]
    data = "\n".join(lines).encode().replace(b"r10", b"r\xff\xfe10")  # invalid UTF-8 in the last one
    data += b"\n" + review(11).encode() + b"\n"
    outcome = run_pipeline(tmp_path, monkeypatch, llama_server, "reviews.jsonl", data)

    assert accounted(outcome) == {
        1: "result",
        2: "result",
        4: "malformed_json",
        5: "not_an_object",
        6: "missing_id",
        7: "missing_field",
        9: "record_too_large",
        10: "invalid_utf8",
        11: "result",
    }
    assert all(d["detail"] and d["attempts"] >= 0 for d in outcome["dead"])
    (manifest,) = outcome["manifests"]
    assert manifest["records"] == 9
    assert manifest["skipped_blank_lines"] == 2  # lines 3 and 8, reported, not lost
    assert outcome["shards"][0]["malformed"]  # the stage reported the bad lines by number before the run


def test_a_csv_with_a_ragged_row(tmp_path, monkeypatch, llama_server):
    data = (
        b'id,review\r\nr1,Great for my migraines\r\nr2,Too many,fields,here\r\nr3,"Quoted, with a comma"\r\n'
    )
    outcome = run_pipeline(tmp_path, monkeypatch, llama_server, "reviews.csv", data)
    assert accounted(outcome) == {2: "result", 3: "ragged_row", 4: "result"}


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("reviews.jsonl", b"id,review\nr1,nice\nr2,bad\n", "reviews.jsonl does not look like JSONL.*line 1"),
        ("reviews.jsonl", b"%PDF-1.7\n\x00\x01\x02\xff binary\n", "reviews.jsonl does not look like JSONL"),
        ("reviews.csv", b"", "reviews.csv is empty"),
        ("reviews.txt", b'{"id": 1}\n', "cannot tell the input format"),
    ],
    ids=["csv-declared-jsonl", "binary", "empty", "unknown-format"],
)
def test_an_unusable_input_fails_the_stage_naming_file_and_line(
    tmp_path, monkeypatch, llama_server, name, data, message
):
    with pytest.raises(StagingError, match=message):
        run_pipeline(tmp_path, monkeypatch, llama_server, name, data)
    assert not (tmp_path / "out").exists()


def test_duplicate_ids_within_and_across_shards_are_dead_lettered_after_the_first(
    tmp_path, monkeypatch, llama_server
):
    ids = ["a", "b", "a", "c", "b", "a"]
    # incompressible text, so that the small shards hold about two records each
    texts = [hashlib.sha256(bytes([n])).hexdigest()[:40] for n in range(len(ids))]
    data = "".join(
        json.dumps({"id": i, "review": t}) + "\n" for i, t in zip(ids, texts, strict=True)
    ).encode()
    outcome = run_pipeline(
        tmp_path, monkeypatch, llama_server, "reviews.jsonl", data, max_shard_bytes=200, max_record_bytes=100
    )
    assert len(outcome["shards"]) >= 2  # the repeats cross shard boundaries
    assert accounted(outcome) == {
        1: "result",
        2: "result",
        3: "duplicate_id",
        4: "result",
        5: "duplicate_id",
        6: "duplicate_id",
    }
    assert sorted(r["id"] for r in outcome["results"]) == ["a", "b", "c"]
