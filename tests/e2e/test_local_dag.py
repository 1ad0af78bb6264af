"""The example DAG end to end in local mode: real operators, worker, model and transport."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"


@pytest.fixture(scope="module")
def local_dag(tmp_path_factory):
    staging = tmp_path_factory.mktemp("staging")
    patch = pytest.MonkeyPatch()
    patch.setenv("LLM_ETL_EXECUTION_MODE", "local")
    patch.setenv("LLM_ETL_LOCAL_DIR", str(staging))
    from airflow.utils.db import initdb

    initdb()
    sys.modules.pop("llm_enrichment", None)
    sys.path.insert(0, str(REPO / "dags"))
    module = importlib.import_module("llm_enrichment")
    yield module.llm_enrichment(), staging  # the decorated function builds the DAG
    sys.path.remove(str(REPO / "dags"))
    patch.undo()


def test_the_dag_enriches_every_record_and_leaves_nothing_behind(tmp_path, local_dag):
    dag, staging = local_dag
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:6]))
    run = dag.test(
        run_conf={
            "input_path": str(source),
            "output_path": str(tmp_path / "out"),
            "model": "smollm2",
            "template": "{review}",
        }
    )
    assert run.state == "success"
    (shard_dir,) = list((tmp_path / "out").glob("*/shard-00000"))
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["records"] == 6
    assert manifest["task"] == "sentiment"
    assert (shard_dir / "_SUCCESS").exists()
    results = [json.loads(line) for line in (shard_dir / "results.jsonl").read_text().splitlines()]
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    assert list(staging.iterdir()) == []  # the teardown removed the shards and the key


def test_one_shard_failing_stops_no_other_and_the_run_manifest_says_which(tmp_path, local_dag):
    """A third of the input malformed: the shards holding it go over the dead-letter threshold and are
    published marked failed (results and dead letters, no _SUCCESS); the other shards publish with their
    _SUCCESS; the run's manifest lists every shard, and the run gets no _SUCCESS."""
    dag, staging = local_dag
    good = [line for line in SAMPLE.read_text().splitlines(keepends=True) if len(line) < 300][:6]
    malformed = [f'{{"id": "bad-{n}", "review": "cut short\n' for n in range(3)]
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(good[:3] + malformed + good[3:]))
    run = dag.test(
        run_conf={
            "input_path": str(source),
            "output_path": str(tmp_path / "out"),
            "model": "smollm2",
            "template": "{review}",
            "shard_bytes": 600,
            "record_bytes": 300,
        }
    )
    assert run.state == "failed"
    (run_dir,) = (tmp_path / "out").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["state"] == "failed"
    assert not (run_dir / "_SUCCESS").exists()
    shards = manifest["shards"]
    assert len(shards) >= 3
    assert [s["shard"] for s in shards] == list(range(len(shards)))
    assert {s["state"] for s in shards} == {"succeeded", "failed"}
    ids: list[str] = []
    for entry in shards:
        folder = run_dir / f"shard-{entry['shard']:05d}"
        shard_manifest = json.loads((folder / "manifest.json").read_text())
        assert shard_manifest["state"] == entry["state"]
        assert (folder / "_SUCCESS").exists() == (entry["state"] == "succeeded")
        for name in ("results.jsonl", "dead_letter.jsonl"):
            ids += [str(json.loads(line).get("id")) for line in (folder / name).read_text().splitlines()]
    # every input line, once, in some shard's results or dead letters
    assert sum(s["records"] for s in shards) == 9
    assert len(ids) == 9
    assert list(staging.iterdir()) == []
