"""The object transport end to end in local mode, against a real S3 server (SeaweedFS, started here) and the
real model: the stage signs URLs, each worker downloads its byte range and writes part objects, extraction
reads the parts; the same records are accounted for as with the log transport."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, ObjectStoragePath

from llm_etl_dev.object_store import BUCKET, S3Account, running_seaweedfs
from llm_etl_provider.contract.object_transport import TRANSPORT_FOLDER
from llm_etl_provider.exceptions import FrameStreamRejectedError, StagingError
from llm_etl_provider.operators.cleanup import CleanupOperator
from llm_etl_provider.operators.extract import ExtractResultsOperator
from llm_etl_provider.operators.local_enrichment import LocalEnrichmentOperator
from llm_etl_provider.operators.stage import StageInputOperator
from llm_etl_provider.transport.extract import published_rows
from tests.integration.pipeline import local_settings, stage_enrich_extract
from tests.task_context import task_context

CONN_ID = "llm_etl_s3"  # a connection of its own: Airflow caches a store per connection id for the process
ROOT = f"s3://{CONN_ID}@{BUCKET}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Account]:
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as account:
        yield account


@pytest.fixture
def store(s3: S3Account, monkeypatch) -> S3Account:
    """An ``aws`` connection to the S3 server: its keys, and the endpoint in its extra (the dev cluster's
    own e2e run goes through ``aws_default`` and the AWS SDK's variables instead)."""
    connection = {
        "conn_type": "aws",
        "login": s3.access_key,
        "password": s3.secret_key,
        "extra": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    return s3


def reviews() -> bytes:
    lines = [json.dumps({"id": f"r{i}", "review": f"It helped my pain {i}."}) for i in range(12)]
    lines[4] = "{broken"
    lines[7] = ""
    lines[9] = json.dumps({"id": "r1", "review": "a repeated id"})
    return ("\n".join(lines) + "\n").encode()


def pipeline(tmp_path: Path, monkeypatch, server, input_path: str, output: str, **stage: Any):
    """stage → enrich → extract for every shard, in local mode through ``server``; the descriptors and the
    run's cleanup."""
    shards = stage_enrich_extract(
        tmp_path, monkeypatch, server, input_path, output, output_path=output, **stage
    )
    with DAG("llm_enrichment", schedule=None):
        cleanup = CleanupOperator(task_id="cleanup", output_path=output, **local_settings(tmp_path))
    return shards, cleanup


def published(output: str) -> tuple[dict[str, int], dict[int, str]]:
    """Each published result's id -> line, and each dead letter's line -> reason, over every shard."""
    results: dict[str, int] = {}
    dead: dict[int, str] = {}
    for manifest in sorted(ObjectStoragePath(output).glob("llm_enrichment/*/shard-*/manifest.json")):
        folder = manifest.parent
        for line in (folder / "results.jsonl").read_text().splitlines():
            record = json.loads(line)
            results[record["id"]] = record["line"]
        for line in (folder / "dead_letter.jsonl").read_text().splitlines():
            letter = json.loads(line)
            dead[letter["line"]] = letter["reason"]
    return results, dead


def test_three_pods_read_their_ranges_and_publish_what_the_log_transport_does(
    tmp_path, monkeypatch, store, llama_server
):
    source = ObjectStoragePath(f"{ROOT}/in/reviews.jsonl")
    source.write_bytes(reviews())
    by_object = f"{ROOT}/out/object"
    shards, cleanup = pipeline(
        tmp_path, monkeypatch, llama_server, str(source), by_object, transport="object", pods=3
    )
    assert [s["transport"] for s in shards] == ["object"] * 3
    assert sum(s["bytes"] for s in shards) == len(reviews())  # JSONL ranges: no prefix, the whole input
    # nothing of the input was staged locally (in Kubernetes: in Secrets): only the URLs
    staged = [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert {p.name for p in staged} <= {"key", "object.json", "duplicates.gz", "input.jsonl", "run.json"} | {
        f"container-try-{n}.log" for n in (1, 2, 3)
    }
    assert all(b"It helped" not in p.read_bytes() for p in staged if p.name in ("object.json", "key"))
    objects, dead = published(by_object)
    # every non-blank line once: line 8 is blank, line 10 repeats r1 (in another shard than line 2)
    assert objects == {f"r{i}": i + 1 for i in (0, 1, 2, 3, 5, 6, 8, 10, 11)}
    assert dead == {5: "malformed_json", 10: "duplicate_id"}
    # the same input through the log transport: the same records, at the same lines, the same reasons
    logged = f"{ROOT}/out/log"
    pipeline(tmp_path / "log", monkeypatch, llama_server, str(source), logged)
    log_results, log_dead = published(logged)
    assert (objects, dead) == (log_results, log_dead)
    run_output = ObjectStoragePath(by_object) / "llm_enrichment" / "r1"  # <output>/<DAG>/<run>
    assert [part.name for part in (run_output / TRANSPORT_FOLDER).iterdir()] == [shards[0]["plan"]]
    assert cleanup.execute(task_context("r1"))["transport_folders"] == 1
    # no object is left (SeaweedFS may still list the emptied folder a while: it removes those lazily)
    left = store.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"out/object/llm_enrichment/r1/{TRANSPORT_FOLDER}/"
    )
    assert left.get("KeyCount") == 0
    assert (run_output / "shard-00000" / "_SUCCESS").exists()  # the results stay


def test_a_parquet_input_s_row_groups_are_the_pods_ranges_and_publish_what_the_log_transport_does(
    tmp_path, monkeypatch, store, llama_server
):
    """A Parquet file of five row groups (a duplicate id, a null review among them) in the store, read by
    three pods, each its whole row groups and the file's footer: the same results at the same rows as the
    log transport's, and nothing of the file staged here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"r{i}", "review": f"It helped my pain {i}" if i != 7 else None} for i in range(15)]
    rows[11]["id"] = "r2"  # a repeated id, in another row group than its first
    local = tmp_path / "reviews.parquet"
    pq.write_table(pa.Table.from_pylist(rows), local, row_group_size=3)
    source = ObjectStoragePath(f"{ROOT}/in/reviews.parquet")
    source.write_bytes(local.read_bytes())
    by_object = f"{ROOT}/out/parquet-object"
    shards, _ = pipeline(
        tmp_path, monkeypatch, llama_server, str(source), by_object, transport="object", pods=3
    )
    assert [s["transport"] for s in shards] == ["object"] * 3
    assert [s["first_line"] for s in shards] == [1, 7, 13]  # whole row groups of three rows: 2 + 2 + 1
    assert sum(s["bytes"] for s in shards) < 3 * local.stat().st_size  # ranges and footers, not the file
    staged = [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert all(b"It helped" not in p.read_bytes() for p in staged if p.name in ("object.json", "key"))
    objects, dead = published(by_object)
    logged = f"{ROOT}/out/parquet-log"
    pipeline(tmp_path / "log", monkeypatch, llama_server, str(source), logged)
    assert (objects, dead) == published(logged)
    assert dead[12] == "duplicate_id"  # row 12 repeats row 3's id
    assert 8 in dead  # row 8 has no review to prompt with
    assert set(objects.values()) | set(dead) == set(range(1, 16))  # every row once, at its own line


def test_a_shard_whose_worker_never_ended_its_stream_publishes_nothing(
    tmp_path, monkeypatch, store, llama_server
):
    source = ObjectStoragePath(f"{ROOT}/in/short.jsonl")
    source.write_bytes(reviews())
    output = f"{ROOT}/out/unfinished"
    local = local_settings(tmp_path)
    with DAG("llm_enrichment", schedule=None):
        (shard,) = StageInputOperator(
            task_id="stage", input_path=str(source), output_path=output, transport="object", pods=1, **local
        ).execute(task_context("r2"))
        # a try's log exists, its parts do not: the worker died before its first checkpoint
        (Path(shard["path"]).parent / "container-try-1.log").write_bytes(b"")
        extract = ExtractResultsOperator(task_id="extract", shard=shard, output_path=output, **local)
        with pytest.raises(FrameStreamRejectedError, match="the worker did not finish its stream"):
            extract.execute(task_context("r2"))
    assert (
        not ObjectStoragePath(output)
        .joinpath("llm_enrichment", "r2", "shard-00000", "results.jsonl")
        .exists()
    )


def test_inputs_the_object_transport_cannot_range_are_refused_before_anything_is_staged(tmp_path, store):
    local = local_settings(tmp_path)
    gzipped = ObjectStoragePath(f"{ROOT}/in/reviews.jsonl.gz")
    gzipped.write_bytes(gzip.compress(reviews()))
    on_disk = tmp_path / "reviews.jsonl"
    on_disk.write_bytes(reviews())
    cases = [
        (str(gzipped), f"{ROOT}/out/x", "is gzip-compressed"),
        (
            str(on_disk),
            f"{ROOT}/out/x",
            "put the input and the output on s3:// or gs://, or use transport=log",
        ),
        (f"{ROOT}/in/reviews.jsonl", str(tmp_path / "out"), "or use transport=log"),
    ]
    ObjectStoragePath(f"{ROOT}/in/reviews.jsonl").write_bytes(reviews())
    with DAG("llm_enrichment", schedule=None):
        for number, (input_path, output, message) in enumerate(cases):
            stage = StageInputOperator(
                task_id=f"stage_{number}",
                input_path=input_path,
                output_path=output,
                transport="object",
                pods=2,
                **local,
            )
            with pytest.raises(StagingError, match=message):
                stage.execute(task_context("r3"))
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").rglob("key"))


def test_urls_that_expire_within_seconds_are_renewed_while_the_worker_runs(
    tmp_path, monkeypatch, capfd, store, llama_server
):
    """Issue 23 (9): URLs signed with temporary credentials (STS, IRSA, SSO: often an hour) die under a pod
    that starts later or runs longer, and a 403 ended the worker with exit 2. Here every URL dies 2 s after it
    is signed (SeaweedFS refuses it with S3's 403 "Request has expired"), the run takes longer than that, and
    the enrichment signs the URLs when the worker starts and renews them every second: the worker, refused an
    expired URL, reads the renewed ones and every record is published."""
    monkeypatch.setattr("llm_etl_provider.backends.urls.expiry_seconds", lambda _: 2)
    lines = [json.dumps({"id": f"r{i}", "review": f"It helped my pain {i}."}) for i in range(40)]
    source = ObjectStoragePath(f"{ROOT}/in/expiring.jsonl")
    source.write_bytes(("\n".join(lines) + "\n").encode())
    output = f"{ROOT}/out/expiring"
    local = local_settings(tmp_path)
    monkeypatch.setenv(
        "AIRFLOW_CONN_LLM_TEST",
        json.dumps(
            {"conn_type": "llm_etl", "host": llama_server.url, "extra": {"api": "openai", "model": "x"}}
        ),
    )
    with DAG("llm_enrichment", schedule=None):
        (shard,) = StageInputOperator(
            task_id="stage", input_path=str(source), output_path=output, transport="object", pods=1,
            checkpoint_every=5, **local,
        ).execute(task_context("r3"))  # fmt: skip
        LocalEnrichmentOperator(
            task_id="enrich", shard=shard, model=llama_server.model_name, template="{review}",
            llm_conn_id="llm_test", checkpoint_every=5, url_renew_seconds=1, concurrency=2,
            local_dir=local["local_dir"],
        ).execute(task_context("r3"))  # fmt: skip
        ExtractResultsOperator(task_id="extract", shard=shard, output_path=output, **local).execute(
            task_context("r3")
        )
    task_log = "".join(capfd.readouterr())  # the worker's stderr, copied into the task log
    assert "the URL had expired (HTTP 403); going on with renewed URLs" in task_log  # they did, mid-run
    objects, dead = published(output)
    assert objects == {f"r{i}": i + 1 for i in range(40)}
    assert dead == {}


def test_a_parquet_input_on_s3_comes_back_as_parquet_with_its_columns_beside_the_enrichment(
    tmp_path, monkeypatch, store, llama_server
):
    """A Parquet file written by DuckDB (nested and null columns) in the store, staged row by row, enriched
    by the real model, published as Parquet to the store and read back by DuckDB."""
    import duckdb

    local = tmp_path / "reviews.parquet"
    duckdb.connect().execute(
        f"""COPY (SELECT 'r' || i AS id, 'It helped my pain ' || i AS review,
        CASE WHEN i % 3 = 0 THEN NULL ELSE i END AS rating, {{'site': 'a', 'visits': [i, i + 1]}} AS source
        FROM range(6) t(i)) TO '{local}' (FORMAT PARQUET, ROW_GROUP_SIZE 2)"""
    )
    source = ObjectStoragePath(f"{ROOT}/in/reviews.parquet")
    source.write_bytes(local.read_bytes())
    output = f"{ROOT}/out/parquet"
    shards, _ = pipeline(
        tmp_path, monkeypatch, llama_server, str(source), output,
        enrichment={"carry_fields": "*"}, output_format="parquet",
    )  # fmt: skip
    assert sum(s["records"] for s in shards) == 6
    (folder,) = [m.parent for m in ObjectStoragePath(output).glob("llm_enrichment/*/shard-*/manifest.json")]
    # (SeaweedFS may still list the extraction's emptied staging folder a while: it removes those lazily)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("_tmp-")) == [
        "_SUCCESS", "dead_letter.parquet", "manifest.json", "results.parquet",
    ]  # fmt: skip
    (tmp_path / "results.parquet").write_bytes((folder / "results.parquet").read_bytes())
    connection = duckdb.connect()
    rows = connection.execute(
        f"SELECT input_id, id, line, review, rating, source.visits, enrichment.sentiment "
        f"FROM '{tmp_path / 'results.parquet'}' ORDER BY line"
    ).fetchall()
    dead = json.loads((folder / "manifest.json").read_text())["dead_letters"]
    assert len(rows) + dead == 6
    for input_id, result_id, line, review, rating, visits, sentiment in rows:
        i = line - 1  # row n of the input is line n
        assert (input_id, result_id, review) == (f"r{i}", f"r{i}", f"It helped my pain {i}")
        assert rating == (None if i % 3 == 0 else i)
        assert visits == [i, i + 1]
        assert sentiment in ("positive", "negative", "neutral")
    described = connection.execute(f"DESCRIBE SELECT * FROM '{tmp_path / 'results.parquet'}'").fetchall()
    types = {row[0]: row[1] for row in described}
    assert types["rating"] == "BIGINT"
    # the same shard again, partitioned by a carried column: one folder per value in the store, replacing
    # the single file; its rows read back whole
    with DAG("llm_enrichment", schedule=None):
        ExtractResultsOperator(
            task_id="extract_partitioned", shard=shards[0], output_path=output, output_format="parquet",
            partition_by="rating", task_settings={"task": "sentiment"}, **local_settings(tmp_path),
        ).execute(task_context("r1"))  # fmt: skip
    values = {p.name for p in (folder / "results").iterdir()}
    assert values == {f"rating={i}" for _, _, line, _, i, _, _ in rows if i is not None} | (
        {"rating=__HIVE_DEFAULT_PARTITION__"} if any(row[4] is None for row in rows) else set()
    )
    assert not (folder / "results.parquet").exists()
    assert sorted(row["line"] for row in published_rows(folder) if row) == [row[2] for row in rows]
