from __future__ import annotations

import gzip
import hashlib
import json
import logging
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from llm_etl_provider.backends.local import LocalBackend
from llm_etl_provider.contract.duplicates import decode_line_numbers
from llm_etl_provider.contract.layout import DUPLICATES_FILE_NAME, shard_folder
from llm_etl_provider.contract.object_transport import ObjectTransport, part_records_for, parts_needed
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.formats.records import InputLimits
from llm_etl_provider.hooks.object_store import ObjectStoreSigner
from llm_etl_provider.staging.cutting import ByteRange, plan_ranges
from llm_etl_provider.staging.object_transport import check_uncompressed, stage_ranges, without_empty_ranges
from llm_etl_provider.staging.plan import WorkerMemory
from llm_etl_provider.staging.validation import validate_input

LOG = logging.getLogger("test-object-transport")


class Signer(ObjectStoreSigner):
    """Signs nothing: a URL that says what it was made for, on a store at an address (no name to resolve)."""

    def sign(self, bucket: str, key: str, method: str, expires: int) -> str:
        return f"http://127.0.0.1:9000/{bucket}/{key}?method={method}&expires={expires}"


def test_ranges_without_a_record_join_their_neighbour():
    ranges = [
        ByteRange(0, 0, 10, 1),
        ByteRange(1, 10, 20, 3),
        ByteRange(2, 20, 30, 5),
        ByteRange(3, 30, 40, 7),
    ]
    joined, records = without_empty_ranges(ranges, [0, 4, 0, 2])
    assert [(r.index, r.start, r.end, r.first_line) for r in joined] == [(0, 0, 30, 1), (1, 30, 40, 7)]
    assert records == [4, 2]


def test_a_gzip_input_is_refused_naming_it(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(gzip.compress(b'{"id": 1}\n'))
    with pytest.raises(StagingError, match=r"^s3://b/in\.jsonl is gzip-compressed: .* or use transport=log$"):
        check_uncompressed(source, "s3://b/in.jsonl")
    source.write_bytes(b'{"id": 1}\n')
    check_uncompressed(source, "s3://b/in.jsonl")


def stage(tmp_path, pods=3, store_cidrs=(), memory=WorkerMemory("1Gi", 1 << 30)):  # noqa: B008 - frozen
    """Stage a JSONL input of 60 records (line 4 broken; lines 41 to 60 but 44 repeat an id) in ``pods``
    ranges into a local backend; return the input, its ranges, its validation, the plan's folder and the
    descriptors."""
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i % 40, "text": "x" * 50}) for i in range(60)]
    lines[3] = "{broken"
    source.write_text("\n".join(lines) + "\n")
    ranges = plan_ranges(source, input_format="jsonl", pods=pods, max_record_bytes=1 << 20)
    validation = validate_input(
        source, input_format="jsonl", id_field="id", max_record_bytes=1 << 20,
        limits=InputLimits(1 << 30, 1000), name="s3://bucket/in.jsonl", log=LOG,
        boundaries=[r.first_line for r in ranges[1:]],
    )  # fmt: skip
    backend = LocalBackend(str(tmp_path / "s"), dag_id="dag", scope="dag", run_id="r1", log=LOG, plan="p1")
    folder = ObjectStoragePath(f"file://{tmp_path}/out/_transport/p1")
    descriptors = stage_ranges(
        backend, source, ranges, validation, source="s3://bucket/in.jsonl", input_format="jsonl", plan="p1",
        plan_folder=folder, signers=(Signer(), Signer()), expires=600, checkpoint_every=5,
        store_cidrs=store_cidrs, memory=memory,
    )  # fmt: skip
    return source, ranges, validation, folder, descriptors


def test_each_range_is_staged_with_its_signed_urls_and_where_its_pod_may_connect(tmp_path):
    stale = tmp_path / "out" / "_transport" / "p1" / shard_folder(0) / "checkpoint.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("sealed with a key that is gone")
    source, ranges, validation, folder, descriptors = stage(tmp_path)
    assert not stale.exists()  # a fresh key: the plan's folder starts afresh
    data = source.read_bytes()
    assert len(descriptors) == len(ranges) == 3
    assert [d["records"] for d in descriptors] == validation.records
    duplicates = [line for line in range(41, 61) if line != 44]  # line 4 held id 3's first record
    assert [d["malformed"] for d in descriptors] == [
        {"malformed_json": [4], "duplicate_id": duplicates},
        {},
        {},
    ]
    repeated = []
    for descriptor, byte_range in zip(descriptors, ranges, strict=True):
        assert descriptor["transport"] == "object"
        assert descriptor["source"] == "s3://bucket/in.jsonl"
        assert descriptor["parts"] == str(folder / shard_folder(byte_range.index))
        assert descriptor["egress"] == [["127.0.0.1", 9000]]
        staged = Path(descriptor["path"])
        document = ObjectTransport.from_json(staged.read_bytes())
        assert (document.input.start, document.input.end) == (byte_range.start, byte_range.end)
        digest = hashlib.sha256(data[byte_range.start : byte_range.end]).hexdigest()
        assert document.input.sha256 == descriptor["input_sha256"] == digest
        assert document.input.url == "http://127.0.0.1:9000/bucket/in.jsonl?method=GET&expires=600"
        part_records = part_records_for(descriptor["records"], 5)
        assert len(document.parts) == parts_needed(descriptor["records"], part_records)
        if descriptor["duplicates"]:
            repeated += decode_line_numbers((staged.parent / DUPLICATES_FILE_NAME).read_bytes())
    assert repeated == validation.duplicates == duplicates


def test_the_pods_connect_to_the_stores_cidrs_where_given(tmp_path):
    *_, descriptors = stage(tmp_path, pods=2, store_cidrs=("10.1.0.0/16", "52.216.0.0/15"))
    assert [d["egress"] for d in descriptors] == [[["10.1.0.0/16", 9000], ["52.216.0.0/15", 9000]]] * 2


def test_a_range_over_the_workers_memory_is_refused_before_anything_is_staged(tmp_path, monkeypatch):
    monkeypatch.setattr("llm_etl_provider.contract.layout.WORKER_BYTES_PER_RECORD", 1 << 20)
    with pytest.raises(StagingError, match=r"^shard 0 holds \d+ records, .* over worker_memory 64Mi: "):
        stage(tmp_path, memory=WorkerMemory("64Mi", 64 << 20))
    assert not (tmp_path / "s").exists()
