from __future__ import annotations

import hashlib

import pytest
from airflow.sdk import ObjectStoragePath

from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.staging.input_copy import input_copy


def test_the_copy_reads_again_and_again_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    data = b'{"id": 1}\n' * 1000
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    with input_copy(ObjectStoragePath(str(source)), max_bytes=len(data), name="in.jsonl") as copy:
        assert copy.sha256 == hashlib.sha256(data).hexdigest()
        with copy.path.open("rb") as first, copy.path.open("rb") as second:
            assert first.read(10) == second.read(10) == data[:10]  # each open has its own offset
        assert list((tmp_path / "tmp").iterdir()) == []  # no name on disk
    assert not copy.path.exists()


def test_an_input_over_max_input_bytes_is_refused(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"x" * 100)
    with (
        pytest.raises(StagingError, match=r"^s3://b/in.jsonl: the input is over max_input_bytes \(99\)$"),
        input_copy(ObjectStoragePath(str(source)), max_bytes=99, name="s3://b/in.jsonl"),
    ):
        pass


def test_an_unreadable_input_is_refused_naming_it(tmp_path):
    with (
        pytest.raises(StagingError, match=r"^cannot read the input missing\.jsonl: "),
        input_copy(ObjectStoragePath(str(tmp_path / "missing.jsonl")), max_bytes=10, name="missing.jsonl"),
    ):
        pass
