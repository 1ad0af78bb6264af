from __future__ import annotations

import gzip
import json
import logging
import random

import pytest

from llm_etl_provider.backends.local import LocalBackend
from llm_etl_provider.contract.duplicates import decode_line_numbers
from llm_etl_provider.contract.layout import DUPLICATES_FILE_NAME
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.staging.cutting import plan_shards
from llm_etl_provider.staging.log_transport import check_run_size, stage_shards
from llm_etl_provider.staging.plan import WorkerMemory

MEMORY = WorkerMemory("1Gi", 1 << 30)


def write_input(path, n):
    rng = random.Random(n)
    path.write_text(
        "".join(json.dumps({"id": i % 150, "text": rng.randbytes(100).hex()}) + "\n" for i in range(n))
    )
    return path


def test_a_run_over_its_caps_is_refused_naming_the_input(tmp_path):
    source = write_input(tmp_path / "in.jsonl", 300)
    shards = list(plan_shards(source, max_shard_bytes=2_000, max_record_bytes=1_000))
    check_run_size(shards, max_shards=len(shards), max_staged_bytes=1 << 20, memory=MEMORY, name="in")
    with pytest.raises(
        StagingError, match=f"^in would stage more than {len(shards) - 1} shards or 1048576 bytes"
    ):
        check_run_size(shards, max_shards=len(shards) - 1, max_staged_bytes=1 << 20, memory=MEMORY, name="in")


def test_each_shard_is_staged_with_its_duplicates_and_the_first_with_the_malformed(tmp_path):
    source = write_input(tmp_path / "in.jsonl", 300)  # lines 151 to 300 repeat an id
    backend = LocalBackend(
        str(tmp_path / "s"), dag_id="dag", scope="dag", run_id="r1", log=logging.getLogger("t"), plan="p1"
    )
    duplicates = list(range(151, 301))
    shards = plan_shards(source, max_shard_bytes=2_000, max_record_bytes=1_000)
    descriptors = stage_shards(backend, shards, {"missing_id": [7]}, duplicates, "p1")
    assert len(descriptors) > 3
    assert [d["malformed"] for d in descriptors[:2]] == [{"missing_id": [7]}, {}]
    staged = []
    for descriptor in descriptors:
        assert descriptor["plan"] == "p1"
        folder = backend.shard_dir(descriptor["index"])
        assert gzip.decompress((folder / "input.jsonl.gz").read_bytes()).startswith(b'{"id": ')
        lines = (
            decode_line_numbers((folder / DUPLICATES_FILE_NAME).read_bytes())
            if descriptor["duplicates"]
            else []
        )
        assert len(lines) == descriptor["duplicates"]
        staged += lines
    assert staged == duplicates
