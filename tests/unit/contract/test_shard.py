from __future__ import annotations

import json

import pytest

from llm_etl_provider.contract.shard import ShardDescriptor, validate_run_id


def test_a_descriptor_travels_through_xcom_as_json_and_back():
    shard = ShardDescriptor(
        index=3, records=10, line_offset=200, input_format="csv", secret="s", duplicates=2,
        malformed={"ragged_row": [201]},
    )  # fmt: skip
    assert ShardDescriptor.from_xcom(json.loads(json.dumps(shard.to_xcom()))) == shard


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shard-2", "shard descriptor, not str"),
        ({"index": 1}, "shard descriptor, not dict"),
        ({"index": 1, "records": None, "line_offset": 0, "input_format": "jsonl"}, "non-integer"),
        (
            {"index": 1, "records": 2, "line_offset": 0, "input_format": "jsonl", "duplicates": [3]},
            "non-integer",
        ),
    ],
)
def test_anything_else_is_refused(value, message):
    with pytest.raises(TypeError, match=message):
        ShardDescriptor.from_xcom(value)


def test_fields_a_newer_stage_adds_are_left_alone():
    value = {"index": 1, "records": 2, "line_offset": 0, "input_format": "jsonl", "parts": 3}
    assert ShardDescriptor.from_xcom(value).records == 2


@pytest.mark.parametrize("run_id", ["manual__2026-11-24T01:00:00+00:00", "scheduled__x", "a.b-c"])
def test_airflow_run_ids_are_frame_run_ids(run_id):
    assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", "my~run", "run/1", "x" * 201, "ü"])
def test_run_ids_frames_cannot_carry_are_refused(run_id):
    with pytest.raises(ValueError, match="not usable in a frame"):
        validate_run_id(run_id)
