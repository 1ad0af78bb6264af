from __future__ import annotations

import gzip
import hashlib
import json
import random
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.api.datamodels._generated import DagRunState

from llm_etl_provider.contract.duplicates import decode_line_numbers
from llm_etl_provider.contract.invocation import LINE_IDS
from llm_etl_provider.contract.layout import (
    ANNOTATION_DAG_ID,
    ANNOTATION_EXPIRES_AT,
    ANNOTATION_RUN_ID,
    DUPLICATES_FILE_NAME,
    LABEL_PLAN,
    LABEL_RUN,
    MANAGED_BY,
    label_value,
    run_annotations,
    run_output_folder,
    run_prefix,
    shard_folder,
)
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.operators.cleanup import CleanupOperator, SweepExpiredOperator
from llm_etl_provider.operators.stage import StageInputOperator
from llm_etl_provider.pod.builder import ServerSpec, pod_invocation
from llm_etl_provider.staging.cutting import DEFAULT_SHARD_BYTES, SECRET_LIMIT
from llm_etl_provider.transport.keys import decode_key

RUN = "manual__2026-11-24T02:00:00+00:00"


def write_input(path, n=300, size=900):
    rng = random.Random(n)
    rows = (json.dumps({"id": f"r{i}", "text": rng.randbytes(size // 2).hex()}) for i in range(n))
    path.write_text("".join(row + "\n" for row in rows))
    return path


def stage(**kwargs):
    with DAG("llm_enrichment", schedule=None):
        return StageInputOperator(task_id="stage", **kwargs)


def test_stage_creates_immutable_labelled_shard_secrets_and_a_key(tmp_path, api):
    source = write_input(tmp_path / "reviews.jsonl")
    op = stage(input_path=str(source), namespace="etl", max_shard_bytes=20_000, max_record_bytes=5_000)
    shards = op.execute({"run_id": RUN})
    key_secret = shards[0]["key_secret"]
    assert key_secret == f"{run_prefix('llm_enrichment', RUN)}-{shards[0]['plan'][:8]}-key"
    assert len(shards) > 1
    assert sum(s["records"] for s in shards) == 300
    assert shards[0]["line_offset"] == 0
    assert shards[1]["line_offset"] == shards[0]["records"]  # no blank lines: one line per record
    names = sorted(name for _, name in api.objects["secrets"])
    assert names == sorted([key_secret] + [s["secret"] for s in shards])
    for (_, _), secret in api.objects["secrets"].items():
        assert secret["immutable"] is True
        assert secret["metadata"]["labels"][LABEL_RUN] == label_value(RUN)
        assert secret["metadata"]["labels"].items() >= MANAGED_BY.items()
        # whose run, and until when: the sweeper asks Airflow about this run, then looks at the deadline
        annotations = secret["metadata"]["annotations"]
        assert (annotations[ANNOTATION_DAG_ID], annotations[ANNOTATION_RUN_ID]) == ("llm_enrichment", RUN)
        assert 7 * 86400 - 60 < int(annotations[ANNOTATION_EXPIRES_AT]) - time.time() <= 7 * 86400
        assert secret["metadata"]["labels"][LABEL_PLAN] == shards[0]["plan"]
    assert len(decode_key(api.secret_bytes("etl", key_secret, "key"), "test")) == 32
    for shard in shards:  # the worker reports the digest of what it read; extraction compares the two
        staged = api.secret_bytes("etl", shard["secret"], "input.jsonl.gz")
        assert shard["input_sha256"] == hashlib.sha256(staged).hexdigest()
    first = gzip.decompress(api.secret_bytes("etl", shards[0]["secret"], "input.jsonl.gz"))
    assert first.startswith(b'{"id": "r0"')
    assert len(json.dumps(shards)) < 10_000  # a small XCom: names and counts, never records


def test_a_stage_run_again_keeps_its_plans_key_and_shards(tmp_path, api):
    """Airflow clears a shard's setup with it: the stage runs again while other shards work with its key."""
    source = write_input(tmp_path / "reviews.jsonl", n=200)
    settings = {
        "input_path": str(source),
        "namespace": "etl",
        "max_shard_bytes": 20_000,
        "max_record_bytes": 5_000,
    }
    first = stage(**settings).execute({"run_id": RUN})
    key = api.secret_bytes("etl", first[0]["key_secret"], "key")
    secrets = {name: secret["data"] for name, secret in api.objects["secrets"].items()}
    api.delete_namespaced_secret(first[1]["secret"], "etl")  # one shard's Secret lost: staged again

    again = stage(**settings).execute({"run_id": RUN})

    assert again == first  # the same descriptors: the mapped tasks' are still right
    assert api.secret_bytes("etl", first[0]["key_secret"], "key") == key
    assert {name: secret["data"] for name, secret in api.objects["secrets"].items()} == secrets


def test_a_stage_whose_plans_key_is_gone_starts_the_plan_afresh(tmp_path, api):
    """The run's cleanup ran (a shard cleared after the run ended): a new key, and nothing the old key sealed
    (a spool on a work claim) is kept."""
    source = write_input(tmp_path / "reviews.jsonl", n=10)
    settings = {"input_path": str(source), "namespace": "etl", "work_claim_size": "1Gi"}
    (shard,) = stage(**settings).execute({"run_id": RUN})
    key = api.secret_bytes("etl", shard["key_secret"], "key")
    api.delete_namespaced_secret(shard["key_secret"], "etl")
    claim = api.objects["claims"][("etl", shard["work_claim"])]

    assert stage(**settings).execute({"run_id": RUN}) == [shard]  # the same names: the relay's still hold
    assert api.secret_bytes("etl", shard["key_secret"], "key") != key
    assert api.objects["claims"][("etl", shard["work_claim"])] is not claim  # made anew


def test_another_input_under_the_same_run_id_is_another_plan_named_apart(tmp_path, api):
    """A run executed again on other data: nothing of the first execution is reused or replaced."""
    settings = {"namespace": "etl"}
    first = stage(input_path=str(write_input(tmp_path / "a.jsonl", n=10)), **settings).execute(
        {"run_id": RUN}
    )
    second = stage(input_path=str(write_input(tmp_path / "b.jsonl", n=12)), **settings).execute(
        {"run_id": RUN}
    )
    assert first[0]["plan"] != second[0]["plan"]
    assert first[0]["key_secret"] != second[0]["key_secret"]
    assert first[0]["secret"] != second[0]["secret"]
    assert len(api.objects["secrets"]) == 4
    # the enrichment's settings are part of the plan too
    other_prompt = stage(
        input_path=str(tmp_path / "b.jsonl"), plan_settings={"template": "{text}"}, **settings
    ).execute({"run_id": RUN})
    assert other_prompt[0]["plan"] != second[0]["plan"]


def test_a_stage_that_fails_after_making_its_key_removes_what_it_staged(tmp_path, api, monkeypatch):
    source = write_input(tmp_path / "reviews.jsonl", n=200)
    calls = []

    def stage_then_fail(self, shard, duplicates=b""):
        calls.append(shard.index)
        if len(calls) == 2:
            raise StagingError("etcd refused the second shard")
        return original(self, shard, duplicates)

    from llm_etl_provider.backends.kubernetes import KubernetesBackend

    original = KubernetesBackend.stage_shard
    monkeypatch.setattr(KubernetesBackend, "stage_shard", stage_then_fail)
    with pytest.raises(StagingError, match="second shard"):
        stage(
            input_path=str(source), namespace="etl", max_shard_bytes=20_000, max_record_bytes=5_000
        ).execute({"run_id": RUN})
    assert calls == [0, 1]
    assert api.objects["secrets"] == {}  # neither the key nor the first shard outlives the failed stage


def test_a_stage_withdraws_the_runs_success_before_it_stages(tmp_path, api):
    source = write_input(tmp_path / "reviews.jsonl", n=10)
    run_folder = tmp_path / "out" / "llm_enrichment" / RUN.replace(":", "").replace("+", "")
    run_folder.mkdir(parents=True)
    (run_folder / "_SUCCESS").write_text("")  # an earlier execution's
    (run_folder / "manifest.json").write_text("{}")
    stage(input_path=str(source), namespace="etl", output_path=str(tmp_path / "out")).execute({"run_id": RUN})
    assert not (run_folder / "_SUCCESS").exists()
    assert not (run_folder / "manifest.json").exists()


def test_local_mode_stages_the_shards_under_local_dir(tmp_path):
    """The stage's backend in local mode: files under ``local_dir`` (their modes: ``tests/unit/backends``)."""
    source = write_input(tmp_path / "reviews.jsonl", n=20)
    op = stage(input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "staging"))
    (shard,) = op.execute({"run_id": RUN})
    root = tmp_path / "staging" / run_prefix("llm_enrichment", RUN) / shard["plan"]
    assert gzip.decompress((root / shard_folder(0) / "input.jsonl.gz").read_bytes()) == source.read_bytes()
    assert shard["path"] == str(root / shard_folder(0) / "input.jsonl.gz")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.jsonl", None, "cannot read the input"),
        ("data.txt", b"x", "cannot tell the input format"),
        ("bad.csv", b"id,id\n1,2\n", "names columns 1 and 2 alike"),
        ("empty.jsonl", b"", r"empty.jsonl is empty \(0 blank lines\)"),
        ("blank.jsonl", b"\n  \n\n", r"blank.jsonl is empty \(3 blank lines\)"),
        ("table.jsonl", b"id,text\n1,a\n2,b\n", r"does not look like JSONL: .* \(malformed_json at line 1\)"),
        (
            "scan.jsonl",
            b"%PDF-1.7\n\x00\xff\xfe\n",
            r"does not look like JSONL: no readable record from line 1",
        ),
        ("rows.csv", b"id,text\n1,a,b\n2,c,d\n", r"does not look like CSV: .* \(ragged_row at line 2\)"),
        # refused by the sharding, after the validation passed: still before anything is staged
        ("header.csv", b'id,"te\nxt"\n1,a\n', r"header.csv:1: a CSV header spanning lines cannot be"),
        (
            "wide.csv",  # each field under the 256 KiB record limit, the row over it
            b"id,a,b\n1," + b"x" * 150_000 + b"," + b"y" * 150_000 + b"\n",
            r"wide.csv:2: a CSV line over",
        ),
    ],
)
def test_unusable_inputs_fail_the_stage_with_a_clear_error(tmp_path, api, name, content, message):
    source = tmp_path / name
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(StagingError, match=message) as info:
        stage(input_path=str(source)).execute({"run_id": RUN})
    assert str(source) in str(info.value) or name == "missing.jsonl"
    assert "/proc/" not in str(info.value)  # names the user's file, not our scratch copy
    assert api.objects["secrets"] == {}


def gzip_of_blank_lines(path, megabytes):
    """A small gzip file that decompresses to ``megabytes`` MiB of newlines (a gzip bomb)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\n" * (1 << 20)
    path.write_bytes(b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush())
    return path


@pytest.mark.parametrize(
    ("name", "write", "caps", "message"),
    [
        (
            "bomb.jsonl.gz",
            lambda path: gzip_of_blank_lines(path, 512),
            {},
            r"10001 blank lines against 0 records, over 10000 \+ 10 per record",
        ),
        (
            "records.jsonl",
            lambda path: write_input(path, n=30, size=10),
            {"max_input_records": 29},
            "holds more than 29 records",
        ),
        (
            "big.jsonl.gz",
            lambda path: path.write_bytes(gzip.compress(write_input(path, n=300, size=100).read_bytes())),
            {"max_input_bytes": 20_000},
            r"over 20000 bytes \(decompressed\)",
        ),
        (
            "raw.jsonl",
            lambda path: write_input(path, n=300, size=100),
            {"max_input_bytes": 20_000},
            r"over max_input_bytes \(20000\)",
        ),
    ],
)
def test_inputs_past_the_caps_are_refused_before_anything_is_staged(
    tmp_path, api, name, write, caps, message
):
    """A gzip bomb of 512 MiB of newlines once kept the stage counting blank lines for minutes (hours for a
    larger one); the caps refuse it after 10,001 lines."""
    source = tmp_path / name
    write(source)
    started = time.monotonic()
    with pytest.raises(StagingError, match=message) as info:
        stage(input_path=str(source), namespace="etl", **caps).execute({"run_id": RUN})
    assert time.monotonic() - started < 20
    assert str(source) in str(info.value)
    assert api.objects["secrets"] == {}


def test_the_stage_keeps_no_named_copy_of_the_input(tmp_path, api, monkeypatch):
    """Its copy has no name from the start: a SIGKILLed stage leaves no plaintext on the worker's disk."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen_while_staging = []
    real_create = api.create_namespaced_secret

    def create_and_look(namespace, body, **kwargs):
        seen_while_staging.append(sorted(p.name for p in scratch.rglob("*")))
        return real_create(namespace, body, **kwargs)

    monkeypatch.setattr(api, "create_namespaced_secret", create_and_look)
    source = write_input(tmp_path / "reviews.jsonl", n=50)
    stage(input_path=str(source), namespace="etl").execute({"run_id": RUN})
    assert seen_while_staging == [[], []]  # the key and the one shard


def sweeping(states: dict[str, str]) -> Any:
    """The part of a task's context the sweeper reads: Airflow's state of a run, as the Task SDK gives it (its
    generated ``DagRunState``, whose ``str()`` is not the state's value; unknown runs raise). The e2e tests
    run the sweeper in Airflow itself (``tests/e2e/test_local_dag.py``)."""

    def get_dagrun_state(dag_id: str, run_id: str) -> DagRunState:
        return DagRunState(states[f"{dag_id}/{run_id}"])

    return {"ti": SimpleNamespace(get_dagrun_state=get_dagrun_state)}


def test_the_sweeper_asks_airflow_for_each_runs_state_and_sweeps_the_namespace_and_local_dirs(tmp_path, api):
    """The sweeper once compared the Task SDK's ``DagRunState`` to plain strings and never saw a run end. The
    rule itself (ended, expired, never a live run) is the backends' (``sweep``, ``sweep_local``), tested
    there; here, that the operator hands them Airflow's states by value, for the cluster and local dirs."""
    future = time.time() + 3600
    for run_id in ("live", "ended"):
        recorded = run_annotations("llm_enrichment", run_id, future)
        api.add_pod("etl", f"pod-{run_id}", {**MANAGED_BY, LABEL_RUN: run_id}, annotations=recorded)
    local = tmp_path / "staging"
    for run_id in ("live", "ended"):
        source = write_input(tmp_path / f"{run_id}.jsonl", n=5)
        stage(input_path=str(source), execution_mode="local", local_dir=str(local)).execute(
            {"run_id": run_id}
        )
    with DAG("llm_etl_sweeper", schedule=None):
        sweeper = SweepExpiredOperator(task_id="sweep", namespace="etl", local_dirs=[str(local)])
    states = {"llm_enrichment/live": "running", "llm_enrichment/ended": "success"}
    assert sweeper.execute(sweeping(states)) == {
        "pods": 1,
        "secrets": 0,
        "claims": 0,
        "network_policies": 0,
        "local_dirs": 1,
        "staging": 0,
    }
    assert [name for _, name in api.objects["pods"]] == ["pod-live"]
    assert [folder.name for folder in local.iterdir()] == [run_prefix("llm_enrichment", "live")]


def test_the_sweeper_removes_extraction_staging_past_the_ttl(tmp_path, api):
    """A killed extraction leaves decrypted results under ``_tmp-*``; if its shard is never extracted again,
    only the sweeper can remove them."""
    now = int(time.time())
    shard = tmp_path / "out" / "run-1" / shard_folder(0)
    old, fresh, undated = shard / f"_tmp-{now - 7200}-aa", shard / f"_tmp-{now - 60}-bb", shard / "_tmp-cc"
    for folder in (old, fresh, undated):
        folder.mkdir(parents=True)
        (folder / "results.jsonl").write_text('{"id": "decrypted"}\n')
    (shard / "results.jsonl").write_text('{"id": "published"}\n')
    with DAG("llm_etl_sweeper", schedule=None):
        sweeper = SweepExpiredOperator(
            task_id="sweep", namespace="etl", ttl_seconds=3600, output_paths=[str(tmp_path / "out")]
        )
    assert sweeper.execute(sweeping({}))["staging"] == 2
    assert {p.name for p in shard.iterdir()} == {"results.jsonl", fresh.name}


def test_limits_are_checked_before_the_input_is_read(tmp_path, api):
    op = stage(input_path=str(tmp_path / "missing.jsonl"), max_shard_bytes=10_000, max_record_bytes=6_000)
    with pytest.raises(StagingError, match="max_record_bytes 6000 must be between 1 and half"):
        op.execute({"run_id": "r1"})
    assert api.objects["secrets"] == {}


def test_stage_reports_malformed_records_by_line_without_content(tmp_path, api):
    source = tmp_path / "reviews.jsonl"
    source.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "text": "CANARY-4711\n\n{"text": "no id"}\n')
    (shard,) = stage(input_path=str(source), namespace="etl").execute({"run_id": RUN})
    assert shard["records"] == 3
    assert shard["malformed"] == {"malformed_json": [2], "missing_id": [4]}
    assert "CANARY" not in json.dumps(shard)


def test_work_claims_are_made_per_shard_named_after_the_plan_and_cleaned_up(tmp_path, api):
    source = write_input(tmp_path / "in.jsonl")
    op = stage(input_path=str(source), namespace="etl", max_shard_bytes=20_000, max_record_bytes=5_000,
               work_claim_size="1Gi", work_storage_class="fast")  # fmt: skip
    shards = op.execute({"run_id": RUN})
    claims = api.objects["claims"]
    assert len(claims) == len(shards) > 1
    for shard in shards:
        claim = claims[("etl", shard["work_claim"])]
        assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
        assert claim["spec"]["storageClassName"] == "fast"
        assert claim["metadata"]["labels"]["llm-etl.io/shard"] == str(shard["index"])
    again = op.execute({"run_id": RUN})  # a stage run again keeps the plan's claims (and checkpoints)
    assert [s["work_claim"] for s in again] == [s["work_claim"] for s in shards]
    assert len(api.objects["claims"]) == len(shards)
    with DAG("llm_enrichment", schedule=None):
        cleanup = CleanupOperator(task_id="cleanup", namespace="etl")
    assert cleanup.execute({"run_id": RUN})["claims"] == len(shards)
    assert api.objects["claims"] == {}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_each_shard_carries_the_lines_that_repeat_an_earlier_id(tmp_path, api, fmt):
    rng = random.Random(5)
    ids = [f"r{rng.randrange(200)}" for _ in range(400)]  # about half repeat an id seen before
    if fmt == "jsonl":
        source = tmp_path / "reviews.jsonl"
        lines = [json.dumps({"id": i, "text": rng.randbytes(200).hex()}) for i in ids]
        first_record_line = 1
    else:
        source = tmp_path / "reviews.csv"
        lines = ["id,text"] + [f'{i},"{rng.randbytes(200).hex()}\n{i}"' for i in ids]  # rows span two lines
        first_record_line = 2
    source.write_text("\n".join(lines) + "\n")
    seen: set[str] = set()
    expected = []
    for n, record_id in enumerate(ids):
        if record_id in seen:
            expected.append(first_record_line + (n if fmt == "jsonl" else 2 * n))
        seen.add(record_id)
    op = stage(input_path=str(source), namespace="etl", max_shard_bytes=20_000, max_record_bytes=5_000)
    shards = op.execute({"run_id": RUN})
    assert len(shards) > 3
    staged = [
        decode_line_numbers(api.secret_bytes("etl", shard["secret"], DUPLICATES_FILE_NAME))
        if shard["duplicates"]
        else []
        for shard in shards
    ]
    assert [line for repeated in staged for line in repeated] == expected
    for shard, following, repeated in zip(shards, shards[1:] + [None], staged, strict=True):
        end = following["first_line"] if following else float("inf")
        assert all(shard["first_line"] <= line < end for line in repeated)
        assert shard["duplicates"] == len(repeated)


@pytest.mark.parametrize(("id_field", "duplicates"), [("uid", 1), ("None", 0), ("id", 0), ("uuid", None)])
def test_the_stage_reads_ids_from_the_workers_id_field(tmp_path, id_field, duplicates):
    """Records identified by another field than ``id`` were refused by the stage as records without ids,
    whatever the worker was told. An id field left unset (``None``: an unset Param rendered) is the
    worker's default, ``id``: where no record has it, each record is named by its line (the shard says so,
    and its worker is told ``#line``); a field named otherwise that no record has is a mistake, refused."""
    source = tmp_path / "reviews.jsonl"
    source.write_text('{"uid": "a"}\n{"uid": "b"}\n{"uid": "a"}\n')
    op = stage(
        input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "s"), id_field=id_field
    )
    if duplicates is None:
        with pytest.raises(StagingError, match="missing_id at line 1"):
            op.execute({"run_id": RUN})
        return
    (shard,) = op.execute({"run_id": RUN})
    assert shard["duplicates"] == duplicates
    assert shard["line_ids"] is (id_field != "uid")
    invocation = pod_invocation(
        {"task": "sentiment", "id_field": id_field},
        run_id=RUN,
        shard=ShardDescriptor.from_xcom(shard),
        server=ServerSpec(),
        model="m",
    )
    assert invocation.id_field == ("uid" if id_field == "uid" else LINE_IDS)


def test_duplicates_travel_with_the_shard_not_in_xcom(tmp_path, api):
    """A file concatenated with itself: every line of the second copy repeats an id. The stage's XCom stays
    small whatever their number (their line numbers once went into XCom and the pod's argv: E2BIG)."""
    source = write_input(tmp_path / "twice.jsonl", n=20_000, size=20)
    source.write_bytes(source.read_bytes() * 2)
    op = stage(input_path=str(source), namespace="etl", max_shard_bytes=200_000, max_record_bytes=5_000)
    shards = op.execute({"run_id": RUN})
    assert sum(shard["duplicates"] for shard in shards) == 20_000
    assert len(json.dumps(shards)) < 600 * len(shards)  # a descriptor's fields, never a line number
    last = shards[-1]
    lines = decode_line_numbers(api.secret_bytes("etl", last["secret"], DUPLICATES_FILE_NAME))
    assert lines[-1] == 40_000
    assert len(api.secret_bytes("etl", last["secret"], DUPLICATES_FILE_NAME)) < 1_000  # runs of 1 compress


def test_a_run_id_frames_cannot_carry_fails_the_stage_before_anything_exists(tmp_path, api):
    source = write_input(tmp_path / "reviews.jsonl", n=5)
    with pytest.raises(StagingError, match="run id 'manual~1' is not usable in a frame"):
        stage(input_path=str(source), namespace="etl").execute({"run_id": "manual~1"})
    assert api.objects["secrets"] == {}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "tags"}, r"task 'tags' needs categories \(--categories\)"),
        ({"task": "tags", "categories": None}, "needs categories"),
        ({"task": "custom", "schema": '{"type": "object"}'}, r"task 'custom' needs system_prompt"),
        ({"task": "sentiment", "max_attempts": "0"}, "max_attempts '0' is not usable"),
    ],
)
def test_settings_that_cannot_make_their_task_fail_the_stage_before_anything_exists(
    tmp_path, api, settings, message
):
    """Every shard's worker would refuse them (exit 2): the run fails at its first step, naming what."""
    source = write_input(tmp_path / "reviews.jsonl", n=5)
    op = stage(input_path=str(source), namespace="etl", plan_settings={"model": "m", **settings})
    with pytest.raises(StagingError, match=message):
        op.execute({"run_id": RUN})
    assert api.objects["secrets"] == {}
    stage(
        input_path=str(source), namespace="etl", plan_settings={"task": "tags", "categories": ["a", "b"]}
    ).execute({"run_id": RUN})


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        ({"max_shards": 3}, "more than 3 shards"),
        ({"max_staged_bytes": 50_000}, "or 50000 bytes"),
    ],
)
def test_a_run_past_its_caps_is_refused_before_anything_is_created(tmp_path, api, caps, message):
    """About 1,000 shards were once written to etcd before Airflow's max_map_length refused the mapping."""
    source = write_input(tmp_path / "reviews.jsonl", n=300)
    op = stage(
        input_path=str(source), namespace="etl", max_shard_bytes=20_000, max_record_bytes=5_000, **caps
    )
    with pytest.raises(StagingError, match=message):
        op.execute({"run_id": RUN})
    assert api.objects["secrets"] == {}


def test_two_pipelines_in_one_dag_keep_apart_in_one_run(tmp_path, api):
    """``llm_enrichment_task_group`` used twice in one DAG: the second stage replaced the first group's key
    and shard Secrets, and the first group then published the second group's data as a success. Each
    group's scope now names, labels and selects its own resources."""
    first, second = write_input(tmp_path / "a.jsonl", n=10), write_input(tmp_path / "b.jsonl", n=20)
    with DAG("llm_enrichment", schedule=None):
        stages = [
            StageInputOperator(task_id=f"{scope}.stage", input_path=str(source), namespace="etl", scope=scope)
            for scope, source in (("reviews", first), ("notes", second))
        ]
        cleanup = CleanupOperator(task_id="reviews.cleanup", namespace="etl", scope="reviews")
    staged = [stage.execute({"run_id": RUN}) for stage in stages]
    assert [s[0]["records"] for s in staged] == [10, 20]
    assert staged[0][0]["secret"] != staged[1][0]["secret"]
    assert len(api.objects["secrets"]) == 4  # two keys, two shards: nothing replaced
    assert cleanup.execute({"run_id": RUN}) == {"pods": 0, "secrets": 2, "claims": 0, "network_policies": 0}
    left = {name for _, name in api.objects["secrets"]}
    assert left == {staged[1][0]["secret"], staged[1][0]["key_secret"]}


def test_a_shard_whose_ids_the_workers_memory_cannot_hold_is_refused_before_anything_is_staged(
    tmp_path, api, monkeypatch
):
    """The worker's limit was a fixed 1 GiB while one shard could hold 50 million records: OOM-killed on every
    try. The limit is a setting now, and the stage refuses the shard, naming what it needs."""
    source = write_input(tmp_path / "reviews.jsonl", n=50)
    monkeypatch.setattr("llm_etl_provider.contract.layout.WORKER_BASE_MEMORY_BYTES", 1 << 20)
    monkeypatch.setattr("llm_etl_provider.contract.layout.WORKER_BYTES_PER_RECORD", 1 << 20)  # 1 MiB each
    with pytest.raises(StagingError, match=r"shard 0 holds 50 records, .* about 51Mi .* worker_memory 32Mi"):
        stage(input_path=str(source), namespace="etl", worker_memory="32Mi").execute({"run_id": RUN})
    assert api.objects["secrets"] == {}
    assert stage(input_path=str(source), namespace="etl", worker_memory="64Mi").execute({"run_id": RUN})
    with pytest.raises(StagingError, match="worker_memory must be a Kubernetes quantity"):  # before reading
        stage(input_path=str(tmp_path / "absent.jsonl"), namespace="etl", worker_memory="lots").execute(
            {"run_id": RUN}
        )


def test_two_dags_with_one_output_path_and_run_id_keep_their_outputs_and_cleanups_apart(tmp_path):
    """Two DAGs (or groups) with the same output path and schedule wrote the same ``shard-N/`` and one cleanup
    deleted the other's live ``_transport`` parts: each run now has ``<output>/<dag>/<group>/<run>/``."""
    out = tmp_path / "out"
    run_id = "scheduled__2026-01-01T00:00:00+00:00"
    folders = {
        dag_id: out / run_output_folder(f"{dag_id}/pipeline", run_id) for dag_id in ("notes", "reviews")
    }
    cleanups = {}
    for dag_id, folder in folders.items():
        with DAG(dag_id, schedule=None):
            cleanups[dag_id] = CleanupOperator(
                task_id="cleanup", output_path=str(out), execution_mode="local",
                local_dir=str(tmp_path / "s"), scope="pipeline",
            )  # fmt: skip
        (folder / "_transport" / "plan").mkdir(parents=True)
    assert folders["notes"] == out / "notes" / "pipeline" / "scheduled__2026-01-01T0000000000"
    cleanups["notes"].execute({"run_id": run_id})
    assert not (folders["notes"] / "_transport").exists()
    assert (folders["reviews"] / "_transport" / "plan").exists()


def test_a_parquet_input_is_staged_as_json_lines_row_by_row(tmp_path):
    import duckdb

    source = tmp_path / "reviews.parquet"
    duckdb.connect().execute(
        f"COPY (SELECT 'r' || i AS id, 'review ' || i AS review, {{'a': i}} AS nested FROM range(30) t(i)) "
        f"TO '{source}' (FORMAT PARQUET)"
    )
    op = stage(input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "staging"))
    (shard,) = op.execute({"run_id": RUN})
    assert (shard["records"], shard["input_format"], shard["first_line"]) == (30, "jsonl", 1)
    staged = gzip.decompress(Path(shard["path"]).read_bytes()).decode().splitlines()
    assert json.loads(staged[4]) == {"id": "r4", "review": "review 4", "nested": {"a": 4}}
    # declared Parquet rather than named so, the same file is the same plan
    declared = stage(
        input_path=str(source), input_format="parquet", execution_mode="local",
        local_dir=str(tmp_path / "staging"),
    ).execute({"run_id": RUN})  # fmt: skip
    assert declared[0]["plan"] == shard["plan"]


def test_a_parquet_input_that_is_not_parquet_is_refused(tmp_path, api):
    fake = tmp_path / "reviews.parquet"
    fake.write_text('{"id": 1, "review": "a"}\n')
    with pytest.raises(StagingError, match=r"reviews.parquet: not a Parquet file"):
        stage(input_path=str(fake)).execute({"run_id": RUN})
    assert api.objects["secrets"] == {}


def test_an_incremental_stage_stages_the_earlier_results_of_its_records_beside_their_shards(tmp_path):
    from llm_etl_provider.contract.reuse import decode_reused, record_digest

    source = write_input(tmp_path / "reviews.jsonl", n=30, size=100)
    records = [json.loads(line) for line in source.read_text().splitlines()]
    earlier = tmp_path / "earlier" / "shard-00000"
    earlier.mkdir(parents=True)
    meta = {"content_sha256": "c" * 64}
    results = [
        {"id": r["id"], "line": 40 + n, "task": "sentiment", "enrichment": {"sentiment": "positive"},
         "meta": {**meta, "record_sha256": record_digest(r)}}
        for n, r in enumerate(records) if n % 3 == 0
    ] + [{"id": "old", "line": 1, "enrichment": {}, "meta": meta}]  # fmt: skip
    (earlier / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    op = stage(
        input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "staging"),
        max_shard_bytes=1500, max_record_bytes=700, previous_output=str(tmp_path / "earlier"),
    )  # fmt: skip
    shards = op.execute({"run_id": RUN})
    assert len(shards) > 1
    assert sum(s["reused"] for s in shards) == 10
    for shard in shards:
        staged = Path(shard["path"]).parent / "reused.gz"
        if not shard["reused"]:
            assert not staged.exists()
            continue
        reused = decode_reused(staged.read_bytes())
        assert len(reused) == shard["reused"]
        assert all((line - 1) % 3 == 0 for line in reused)  # each by its line in this input
        assert all(result["enrichment"] == {"sentiment": "positive"} for result in reused.values())
    # another earlier output is another plan
    other = tmp_path / "other" / "shard-00000"
    other.mkdir(parents=True)
    (other / "results.jsonl").write_text("")
    again = stage(
        input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "staging"),
        max_shard_bytes=1500, max_record_bytes=700, previous_output=str(tmp_path / "other"),
    ).execute({"run_id": RUN})  # fmt: skip
    assert again[0]["plan"] != shards[0]["plan"]
    assert sum(s["reused"] for s in again) == 0


def test_an_earlier_output_without_shards_is_refused_before_anything_is_staged(tmp_path, api):
    source = write_input(tmp_path / "reviews.jsonl", n=5)
    with pytest.raises(StagingError, match="no shard folder under the earlier output"):
        stage(input_path=str(source), previous_output=str(tmp_path)).execute({"run_id": RUN})
    assert api.objects["secrets"] == {}


def test_local_shards_are_files_larger_than_a_secret_and_kubernetes_ones_are_not(tmp_path, api):
    """Random hex compresses to about half: 3,000 records of 900 bytes are ~1.5 MB of shard, which a
    Secret cannot hold (three shards in Kubernetes) and a local file can (one shard, one worker start)."""
    source = write_input(tmp_path / "reviews.jsonl", n=3000)
    local = stage(input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "s"))
    (shard,) = local.execute({"run_id": RUN})
    assert shard["records"] == 3000
    assert shard["bytes"] > SECRET_LIMIT
    in_kubernetes = stage(input_path=str(source), namespace="etl").execute({"run_id": RUN})
    assert len(in_kubernetes) == 3
    assert all(s["bytes"] <= DEFAULT_SHARD_BYTES for s in in_kubernetes)
    with pytest.raises(StagingError, match="over a Secret's 1048576 bytes"):
        stage(input_path=str(source), namespace="etl", max_shard_bytes=2 << 20).execute({"run_id": RUN})
    with pytest.raises(StagingError, match="over a local shard's 1073741824 bytes"):
        stage(
            input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "s"),
            max_shard_bytes=2 << 30,
        ).execute({"run_id": RUN})  # fmt: skip


def test_ids_of_the_wrong_type_are_refused_by_name_not_replaced_by_lines(tmp_path):
    """A pandas export turns an integer id column with a gap into floats: the field is there, so the
    records are not named by their line; the stage refuses them, saying what is wrong."""
    source = tmp_path / "reviews.jsonl"
    source.write_text('{"id": 1.0, "text": "a"}\n{"id": 2.0, "text": "b"}\n')
    op = stage(input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "s"))
    with pytest.raises(StagingError, match="missing_id at line 1"):
        op.execute({"run_id": RUN})


def test_carried_fields_of_a_json_input_are_typed_over_the_whole_input_for_every_shard(tmp_path):
    """A field null in every record of one shard and a number in another's: typed from the values of one
    shard each, their Parquet columns would differ (text, a number); typed over the whole input, every
    shard gives them the same column."""
    from llm_etl_provider.formats.parquet import read_columns

    rows = [
        {"id": f"r{i}", "text": "x" * 200, "rating": None if i < 20 else i, "tags": [] if i < 20 else ["a"]}
        for i in range(40)
    ]
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    shards = stage(
        input_path=str(source), execution_mode="local", local_dir=str(tmp_path / "s"), max_shard_bytes=600,
        max_record_bytes=300, plan_settings={"carry_fields": "rating,tags,absent"},
    ).execute({"run_id": RUN})  # fmt: skip
    assert len(shards) > 2
    assert len({shard["carried_columns"] for shard in shards}) == 1
    columns = read_columns(shards[0]["carried_columns"])
    assert [(field.name, str(field.type)) for field in columns] == [
        ("rating", "int64"), ("tags", "list<item: string>"), ("absent", "string"),
    ]  # fmt: skip
