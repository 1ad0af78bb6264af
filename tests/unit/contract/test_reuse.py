"""The reused file and the digests both sides compute."""

from __future__ import annotations

import gzip

import pytest

from llm_etl_provider.contract.reuse import (
    ReusedFileError,
    content_digest,
    content_key,
    decode_reused,
    encode_reused,
    record_digest,
)


def test_the_reused_file_round_trips_earlier_results_by_line():
    data = encode_reused([(3, '{"id": "a", "enrichment": {"x": 1}}'), (9, '{"id": "b"}')])
    assert decode_reused(data) == {3: {"id": "a", "enrichment": {"x": 1}}, 9: {"id": "b"}}


@pytest.mark.parametrize(
    "data", [b"not gzip", gzip.compress(b"{}\n"), gzip.compress(b'{"line": "3", "result": {}}\n')]
)
def test_a_malformed_reused_file_is_refused(data):
    with pytest.raises(ReusedFileError):
        decode_reused(data)


def test_a_record_s_digest_ignores_field_order_and_its_content_digest_changes_with_what_decides_it():
    assert record_digest({"a": 1, "b": "x"}) == record_digest({"b": "x", "a": 1})
    assert record_digest({"a": 1}) != record_digest({"a": 2})
    made = {"task": "sentiment", "model": "m", "model_digest": "sha256:1", "prompt_sha256": "p",
            "schema_sha256": "s", "sampling": {"temperature": 0.0}, "server": {"version": "1"}}  # fmt: skip
    record = record_digest({"a": 1})
    assert content_digest(record, content_key({**made, "server": {"version": "2"}})) == content_digest(
        record, content_key(made)
    )
    for part, value in [
        ("model_digest", "sha256:2"),
        ("prompt_sha256", "q"),
        ("sampling", {"temperature": 1}),
    ]:
        changed = content_digest(record, content_key({**made, part: value}))
        assert changed != content_digest(record, content_key(made)), part
