"""What Airflow users do every day, on a real Airflow deployment (PostgreSQL, scheduler, REST API as the UI
drives it) in local mode: clear one shard of a finished run, clear the whole run. Airflow clears a work task's
setup (the stage) and teardown (the cleanup) with it; the run must still publish every shard, each once,
with nothing of another execution and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.airflow_stack import AirflowStack
from tests.e2e.conftest import REPO, llm_etl_options, short_reviews

DAG_ID = "llm_enrichment"
GROUP = "llm_enrichment"


def shard_manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {path.parent.name: json.loads(path.read_text()) for path in run_dir.glob("shard-*/manifest.json")}


def test_clearing_one_shard_or_the_whole_run_reruns_only_that_and_publishes_the_whole_run(tmp_path):
    reviews = [line for line in short_reviews(40) if len(line) < 290][:6]
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(reviews))
    staging = tmp_path / "staging"
    settings = llm_etl_options(execution_mode="local", local_dir=str(staging))
    conf = {"input_path": str(source), "output_path": str(tmp_path / "out"), "template": "{review}",
            "shard_bytes": 600, "record_bytes": 300}  # fmt: skip
    with AirflowStack(tmp_path / "airflow", REPO / "dags", settings) as airflow:
        run_id = airflow.trigger(DAG_ID, conf)
        assert airflow.wait_until_ended(DAG_ID, run_id) == "success", airflow.logs()[-3000:]
        run_dir = tmp_path / "out" / DAG_ID / GROUP / run_id.replace(":", "").replace("+", "")
        first = shard_manifests(run_dir)
        assert len(first) >= 3, first.keys()

        # one finished shard, as from the UI (Downstream on): its setup and teardown come with it
        cleared = airflow.clear(DAG_ID, run_id, [[f"{GROUP}.shard.enrich", 1]])
        assert {f"{GROUP}.stage", f"{GROUP}.cleanup", f"{GROUP}.shard.enrich[1]"} <= cleared, cleared
        assert not {f"{GROUP}.shard.enrich[0]", f"{GROUP}.shard.extract[0]"} & cleared
        assert airflow.wait_until_ended(DAG_ID, run_id) == "success", airflow.logs()[-3000:]
        second = shard_manifests(run_dir)
        states = airflow.task_states(DAG_ID, run_id)

        # one shard alone (Downstream off): the teardown, cleared with it, once ran right after the stage and
        # removed the staging under the shard's new try
        cleared = airflow.clear(DAG_ID, run_id, [[f"{GROUP}.shard.enrich", 2]], downstream=False)
        assert cleared == {f"{GROUP}.stage", f"{GROUP}.cleanup", f"{GROUP}.shard.enrich[2]"}, cleared
        airflow.wait_until_ended(DAG_ID, run_id)
        alone = airflow.task_states(DAG_ID, run_id)

        # the whole run, as "Clear" on the run does: a new execution of every task
        airflow.clear(DAG_ID, run_id)
        assert airflow.wait_until_ended(DAG_ID, run_id) == "success", airflow.logs()[-3000:]
        third = shard_manifests(run_dir)

    assert states[f"{GROUP}.stage"] == "success"
    assert alone[f"{GROUP}.shard.enrich[2]"] == "success", alone
    assert alone[f"{GROUP}.cleanup"] == "success", alone
    assert second.keys() == first.keys()
    for name, manifest in second.items():
        if name == "shard-00001":  # enriched again, by its second try, and published again
            assert manifest["attempt"] == 2
            assert manifest["published_at"] >= first[name]["published_at"]
        else:  # the other shards' work was neither redone nor lost
            assert manifest == first[name], name
    assert all(manifest["attempt"] >= 2 for manifest in third.values())
    assert {manifest["plan"] for manifest in third.values()} == {first["shard-00000"]["plan"]}
    run = json.loads((run_dir / "manifest.json").read_text())
    assert (run["state"], run["records"]) == ("succeeded", 6)
    assert (run_dir / "_SUCCESS").exists()
    ids = [
        json.loads(line)["id"]
        for path in run_dir.glob("shard-*/results.jsonl")
        for line in path.read_text().splitlines()
    ]
    dead = [path for path in run_dir.glob("shard-*/dead_letter.jsonl") if path.read_text()]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in reviews) or dead  # each record once
    assert len(ids) == len(set(ids))
    assert list(staging.iterdir()) == []  # the teardown removed the key and the shards each time
