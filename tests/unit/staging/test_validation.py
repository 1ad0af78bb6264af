from __future__ import annotations

import json
import logging

import pytest

from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.formats.records import InputLimits
from llm_etl_provider.staging.validation import FORMAT_PROBE_RECORDS, Validation, validate_input

LIMITS = InputLimits(max_bytes=1 << 30, max_records=1_000_000)


def validate(path, fmt="jsonl", boundaries=(), id_field="id"):
    log = logging.getLogger("test-validation")
    return validate_input(
        path, input_format=fmt, id_field=id_field, max_record_bytes=1 << 20, limits=LIMITS, name="s3://b/in",
        log=log, boundaries=boundaries,
    )  # fmt: skip


def test_malformed_records_and_repeated_ids_are_reported_by_line_without_content(tmp_path, caplog):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n{"id": 2, "text": "CANARY\n\n{"text": "no id"}\n{"id": 1}\n{"id": 5}\n')
    with caplog.at_level(logging.WARNING, logger="test-validation"):
        found = validate(source, boundaries=[4])
    assert found == Validation(
        malformed={"malformed_json": [2], "missing_id": [4], "duplicate_id": [5]},
        duplicates=[5],
        records=[2, 3],  # the records before line 4, and from it on
    )
    assert "s3://b/in: records at lines 2 are malformed_json and will go to the dead letters" in caplog.text
    assert "CANARY" not in caplog.text


def test_an_input_without_a_record_is_refused(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n\n\n")
    with pytest.raises(StagingError, match=r"^s3://b/in is empty \(3 blank lines\): no record to enrich$"):
        validate(source)


def test_an_input_of_another_format_is_refused_at_the_first_records(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f"id,text{i}\n" for i in range(FORMAT_PROBE_RECORDS)) + json.dumps({"id": 1}))
    with pytest.raises(
        StagingError, match=r"^s3://b/in does not look like JSONL: no readable record from line 1"
    ):
        validate(source)


def test_ids_are_those_of_the_workers_id_field(tmp_path):
    """The stage reads the input as the worker will, with its --id-field: another field than ``id`` is no
    input of records without ids (refused), and its repeats are the duplicates."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"uid": 1}\n{"uid": 2}\n{"uid": 1}\n')
    assert validate(source, id_field="uid") == Validation(
        malformed={"duplicate_id": [3]}, duplicates=[3], records=[3]
    )
    with pytest.raises(StagingError, match="no readable record from line 1 on \\(missing_id at line 1\\)"):
        validate(source)
