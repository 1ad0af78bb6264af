"""The example DAG end to end in local mode: real operators, worker, model and transport."""

from __future__ import annotations

import decimal
import importlib
import importlib.util
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llm_etl_provider.backends.llama_server import MODEL_SHA256
from llm_etl_provider.config import env_var
from llm_etl_provider.contract.provenance import provenance_id

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"


@pytest.fixture(scope="module")
def local_dag(tmp_path_factory):
    staging = tmp_path_factory.mktemp("staging")
    patch = pytest.MonkeyPatch()
    patch.setenv(env_var("execution_mode"), "local")
    patch.setenv(env_var("local_dir"), str(staging))
    from airflow.utils.db import initdb

    initdb()
    yield _load("llm_enrichment"), staging
    patch.undo()


def fresh_dag(local_dag: Any) -> Any:
    """The example DAG loaded again, in the module's local mode: ``dag.test`` keeps a run's conf in the DAG's
    Params, so a test that leaves some Params at their defaults must not share the module's DAG."""
    return _load("llm_enrichment")


def _load(name: str) -> Any:
    """The example DAG ``name`` as the environment configures it now."""
    sys.modules.pop(name, None)
    sys.path.insert(0, str(REPO / "dags"))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "dags"))
    return getattr(module, name)()  # the decorated function builds the DAG


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
    (shard_dir,) = list((tmp_path / "out").glob("*/*/*/shard-00000"))
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["records"] == 6
    assert manifest["task"] == "sentiment"
    assert (shard_dir / "_SUCCESS").exists()
    results = [json.loads(line) for line in (shard_dir / "results.jsonl").read_text().splitlines()]
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    # what made them: the bundled file's digest, llama.cpp's build, in every row by its id
    made = manifest["provenance"]
    assert made["model_digest"] == f"sha256:{MODEL_SHA256}"
    assert made["server"]["api"] == "openai"
    assert made["server"]["version"]  # llama-server's build_info
    assert {r["meta"]["provenance"] for r in results} == {provenance_id(made)}
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
    (run_dir,) = (tmp_path / "out" / "llm_enrichment" / "llm_enrichment").iterdir()
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


def _delete_run(dag_id: str, run_id: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))


def _published_ids(run_dir: Path) -> set[str]:
    return {
        json.loads(line)["id"]
        for path in run_dir.glob("shard-*/results.jsonl")
        for line in path.read_text().splitlines()
    }


def test_a_run_executed_again_on_other_data_publishes_only_the_new_executions_shards(tmp_path, local_dag):
    """The example DAG executed twice under one run id (``airflow dags test`` with the same date), the second
    time on a smaller, disjoint input: the first execution's shards once stayed beside the second's, under a
    run manifest and a ``_SUCCESS`` that counted only the second."""
    dag, staging = local_dag
    short = [line for line in SAMPLE.read_text().splitlines(keepends=True) if len(line) < 300]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(short[:6]))
    second.write_text("".join(short[6:8]))
    date = datetime(2026, 3, 1, tzinfo=UTC)
    conf = {
        "output_path": str(tmp_path / "out"),
        "model": "smollm2",
        "template": "{review}",
        "shard_bytes": 600,
    }

    runs: list[Any] = []
    for source in (first, second):
        if runs:  # as `airflow dags test` does before it runs the same date again (a bulk delete: with
            # several serialized versions of the DAG, its own delete trips over DagRun.serialized_dag)
            _delete_run(dag.dag_id, runs[0].run_id)
        runs.append(dag.test(run_after=date, logical_date=date, run_conf={**conf, "input_path": str(source)}))

    assert [run.state for run in runs] == ["success", "success"]
    assert runs[0].run_id == runs[1].run_id
    (run_dir,) = (tmp_path / "out" / "llm_enrichment" / "llm_enrichment").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["records"] == 2
    assert manifest["removed_stale_folders"]  # the first execution cut more shards
    assert _published_ids(run_dir) == {json.loads(line)["id"] for line in short[6:8]}
    assert len(list(run_dir.glob("shard-*"))) == len(manifest["shards"])
    assert (run_dir / "_SUCCESS").exists()
    assert list(staging.iterdir()) == []


def test_the_sweeper_asks_airflow_itself_whether_a_run_ended(tmp_path, local_dag, monkeypatch):
    """``str(ti.get_dagrun_state(...))`` gave ``'DagRunState.SUCCESS'`` under the Task SDK, so the sweeper
    never saw a run end: here the real Task SDK answers, no stub of it."""
    dag, staging = local_dag
    source = tmp_path / "reviews.jsonl"
    source.write_text(next(line for line in SAMPLE.read_text().splitlines(keepends=True) if len(line) < 300))
    ended = dag.test(
        run_conf={"input_path": str(source), "output_path": str(tmp_path / "out"), "template": "{review}"}
    )
    assert ended.state == "success"
    # what a run that missed its cleanup would have left, and what a run Airflow does not know left
    left = {"ended": (ended.run_id, ended.state), "unknown": ("manual__no-such-run", None)}
    for name, (run_id, _) in left.items():
        folder = staging / f"llm-etl-{name}"
        folder.mkdir()
        (folder / "run.json").write_text(
            json.dumps({"dag_id": dag.dag_id, "run_id": run_id, "expires_at": time.time() + 3600})
        )
    monkeypatch.setenv(env_var("local_dir"), str(staging))
    sweeper = _load("llm_etl_sweeper")
    assert sweeper.test().state == "success"
    assert sorted(p.name for p in staging.iterdir()) == ["llm-etl-unknown"]  # until its deadline
    shutil.rmtree(staging / "llm-etl-unknown")


def test_the_smallest_dag_enriches_a_csv_of_its_own_field_names(tmp_path, local_dag, monkeypatch):
    """The README's DAG for a user's own data (``examples/enrich_my_records.py``), as a user copies it: a CSV
    keyed ``ticket_no`` whose other columns no template names; every record is enriched from its whole row,
    and the run publishes its manifest and report."""
    # dag.test runs the DAG as its bundle serializes it: the examples folder is a second bundle here, as a
    # user's DAG folder is theirs
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": path},
        }
        for name, path in (("dags-folder", str(REPO / "dags")), ("examples", str(REPO / "examples")))
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    spec = importlib.util.spec_from_file_location(
        "enrich_my_records", REPO / "examples" / "enrich_my_records.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # [llm_etl] execution_mode = local, as the fixture sets it
    dag = module.enrich_my_records()
    source = tmp_path / "tickets.csv"
    source.write_text(
        "ticket_no,product,subject,body\n"
        "T-1,Router X2,Works great,Set up in five minutes and the signal is strong everywhere.\n"
        'T-2,Router X2,Dropped again,"The connection drops every evening, support never called back."\n'
        "T-3,Cable 5m,Arrived,It is a cable.\n"
    )
    run = dag.test(
        run_conf={"input_path": str(source), "output_path": str(tmp_path / "out"), "id_field": "ticket_no"}
    )
    assert run.state == "success"
    (run_dir,) = list((tmp_path / "out").glob("enrich_my_records/*/*"))
    results = [
        json.loads(line) for line in (run_dir / "shard-00000" / "results.jsonl").read_text().splitlines()
    ]
    assert sorted(r["id"] for r in results) == ["T-1", "T-2", "T-3"]
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    assert json.loads((run_dir / "manifest.json").read_text())["report"] == "report.html"
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (run_dir / "_SUCCESS").exists()


@pytest.mark.parametrize("deferrable", [False, True], ids=["polled", "deferred"])
def test_airflow_s_llm_batch_decorator_runs_on_the_bundled_model(
    tmp_path, local_dag, monkeypatch, deferrable
):
    """``dags/llm_batch.py``: common.ai's ``@task.llm_batch`` through the ``llm-etl`` adapter, in local
    execution with the bundled model (the connection names no server), its rows read by the next task.
    Deferred, common.ai's trigger builds the adapter again by its entry point and polls the batch."""
    monkeypatch.setenv(env_var("deferrable"), str(deferrable).lower())
    monkeypatch.setenv("AIRFLOW_CONN_LLM_ETL_DEFAULT", json.dumps({"conn_type": "llm_etl"}))
    monkeypatch.setenv(env_var("local_dir"), str(tmp_path / "batch-staging"))
    dag = _load("llm_batch")
    # deferred, the task defers at its first poll: the runner is still loading the model
    assert dag.get_task("classify").deferrable is deferrable
    run = dag.test(run_conf={"reviews": 4, "result_path": str(tmp_path / "batches")})
    assert run.state == "success"
    (landed,) = list((tmp_path / "batches").glob("*/*.jsonl"))
    rows = [json.loads(line) for line in landed.read_text().splitlines()]
    assert sorted(row["index"] for row in rows) == [0, 1, 2, 3]
    assert sum(row["status"] == "success" for row in rows) >= 3
    assert run.get_task_instance("count").state == "success"
    # the batch's files stay for a clear to land its rows again, until the sweeper sees its run end
    (batch,) = list((tmp_path / "batch-staging").glob("llm-etl-*"))
    assert json.loads((batch / "run.json").read_text())["dag_id"] == "llm_batch"


def test_a_parquet_file_runs_through_the_example_dag_and_comes_back_as_parquet_beside_its_columns(
    tmp_path, local_dag
):
    """A user's Parquet file (pyarrow, typed and nested columns, nulls) through the trigger form's Params:
    the results are Parquet, each row the chosen input columns and the enrichment, read back by DuckDB."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    dag = fresh_dag(local_dag)
    reviews = [json.loads(line) for line in SAMPLE.read_text().splitlines() if len(line) < 500][:5]
    table = pa.Table.from_pylist(
        [
            {
                "id": row["id"], "review": row["review"], "drug": row["drug"],
                "rating": None if i == 2 else float(i), "seen": datetime(2026, 1, i + 1, tzinfo=UTC),
                "extra": {"condition": row["condition"], "codes": [i]},
            }
            for i, row in enumerate(reviews)
        ]
    )  # fmt: skip
    pq.write_table(table, tmp_path / "reviews.parquet", row_group_size=2)
    run = dag.test(
        run_conf={
            "input_path": str(tmp_path / "reviews.parquet"), "output_path": str(tmp_path / "out"),
            "model": "smollm2", "template": "{review}", "carry_fields": ["drug", "rating", "seen", "extra"],
            "output_format": "parquet",
        }
    )  # fmt: skip
    assert run.state == "success"
    (results,) = list((tmp_path / "out").glob("*/*/*/shard-00000/results.parquet"))
    assert (results.parent / "dead_letter.parquet").exists()
    assert not list((tmp_path / "out").rglob("*.jsonl"))
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT id, line, drug, rating, seen, extra.condition, enrichment.sentiment FROM '{results}' "
            "ORDER BY line"
        )
        .fetchall()
    )
    assert len(rows) >= 4  # a 135M model may break its schema once: that record is a dead letter
    for record_id, line, drug, rating, seen, condition, sentiment in rows:
        i = line - 1
        assert (record_id, drug, condition) == (reviews[i]["id"], reviews[i]["drug"], reviews[i]["condition"])
        assert rating == (None if i == 2 else float(i))
        assert seen == datetime(2026, 1, i + 1, tzinfo=UTC)  # the input's timestamp, typed as it was
        assert sentiment in ("positive", "negative", "neutral")
    # the columns' types: the carried ones the input's, the enrichment's from the task's JSON schema
    assert pq.read_schema(results).field("seen").type == table.schema.field("seen").type
    assert pq.read_schema(results).field("enrichment").type == pa.struct([("sentiment", pa.string())])
    # the run's manifest and report count the Parquet results as they count JSON lines
    (manifest,) = list((tmp_path / "out").glob("*/*/*/manifest.json"))
    assert json.loads(manifest.read_text())["results"] == len(rows)


def test_a_run_again_after_one_row_changed_asks_the_model_once_and_publishes_the_rest_again(
    tmp_path, local_dag
):
    """An incremental run through the trigger form: the same Parquet file with one review changed, its
    earlier run's folder as ``previous_output``: every unchanged record that had a result gets it again,
    marked reused, and only the changed one (and any the first run dead-lettered) goes to the model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dag = fresh_dag(local_dag)
    reviews = [json.loads(line) for line in SAMPLE.read_text().splitlines() if len(line) < 400][:6]

    def run(rows: list[dict[str, Any]], output: Path, **conf: Any) -> dict[str, Any]:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "reviews.parquet")
        state = dag.test(
            run_conf={
                "input_path": str(tmp_path / "reviews.parquet"), "output_path": str(output),
                "model": "smollm2", "template": "{review}", "output_format": "parquet", **conf,
            }
        ).state  # fmt: skip
        assert state == "success"
        (manifest,) = list(output.glob("*/*/*/manifest.json"))
        return {"folder": manifest.parent, **json.loads(manifest.read_text())}

    first = run(reviews, tmp_path / "first")
    changed = [dict(row) for row in reviews]
    changed[3]["review"] = "Changed my mind: it gave me headaches every day."
    second = run(changed, tmp_path / "second", previous_output=str(first["folder"]))

    def rows(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
        table = pq.read_table(next(manifest["folder"].glob("shard-*/results.parquet")))
        return {row["id"]: row for row in table.to_pylist()}

    before, after = rows(first), rows(second)
    unchanged = set(before) - {changed[3]["id"]}
    assert second["reused"] == len(unchanged)
    assert {i for i, row in after.items() if row["meta"]["reused"]} == unchanged
    assert all(after[i]["enrichment"] == before[i]["enrichment"] for i in unchanged)
    (shard,) = second["shards"]
    summary = json.loads((second["folder"] / "shard-00000" / "manifest.json").read_text())["worker_summary"]
    asked = summary["records"] - summary["reused"]
    assert asked == 6 - len(unchanged)  # the changed record, and any the first run could not answer
    assert summary["prompt_tokens"] < first["prompt_tokens"] * asked / 6 + 50
    assert shard["reused"] == len(unchanged)


def test_a_warehouse_table_without_ids_from_duckdb_runs_twice_and_a_glob_reads_each_run_whole(
    tmp_path, local_dag
):
    """What a warehouse exports: a DuckDB table with no ``id`` column, typed and nested columns, nulls, a
    column name with a space. Through the trigger form with only paths and a template: its rows are named by
    their line; run again with one row changed, only that row (and any the first run could not answer)
    goes to the model; DuckDB reads each run's results with one glob, the input's types back."""
    import duckdb

    dag = fresh_dag(local_dag)
    source = tmp_path / "visits.parquet"

    def export(changed: str | None) -> None:
        duckdb.connect().execute(
            f"""COPY (SELECT
                  CASE WHEN i = 2 AND {changed is not None} THEN '{changed or ""}'
                       ELSE 'Visit ' || i || ': the new drug helped my pain a lot.' END AS "visit note",
                  TIMESTAMP '2026-01-01 08:00:00' + INTERVAL (i) HOUR AS seen,
                  CAST(i * 1.25 AS DECIMAL(9, 2)) AS dose,
                  CASE WHEN i % 2 = 0 THEN NULL ELSE {{'site': 'north', 'codes': [i, i + 1]}} END AS detail
                FROM range(5) t(i)) TO '{source}' (FORMAT PARQUET)"""
        )

    def run(output: Path, **conf: Any) -> Any:
        state = dag.test(
            run_conf={
                "input_path": str(source), "output_path": str(output), "model": "smollm2",
                "template": "{visit note}", "output_format": "parquet", "carry_fields": ["*"], **conf,
            }
        ).state  # fmt: skip
        assert state == "success"
        (manifest,) = list(output.glob("*/*/*/manifest.json"))
        return manifest.parent

    export(None)
    first = run(tmp_path / "first")
    export("Visit 2: it gave me headaches every single day.")
    second = run(tmp_path / "second", previous_output=str(first))
    connection = duckdb.connect()

    def rows(folder: Path) -> list[tuple[Any, ...]]:
        return connection.execute(
            f"""SELECT id, line, "visit note", seen, dose, detail.codes, enrichment.sentiment, meta.reused
            FROM read_parquet('{folder}/shard-*/results.parquet') ORDER BY line"""
        ).fetchall()

    before, after = rows(first), rows(second)
    assert [row[0] for row in after] == [str(row[1]) for row in after]  # each row named by its line
    assert after[0][3:5] == (datetime(2026, 1, 1, 8, 0), decimal.Decimal("0.00"))  # typed as exported
    answered = {row[1] for row in before}
    reused = {row[1] for row in after if row[7]}
    assert reused == answered - {3}  # row 3 (i = 2) changed: asked again; the others are the first run's
    assert all(b[6] == a[6] for b in before for a in after if b[1] == a[1] and a[7])


def test_a_golden_set_below_min_quality_withholds_the_run_s_success_and_says_the_measure(tmp_path, local_dag):
    """The quality gate through the trigger form: a labelled golden set enriched with the run, published
    apart, measured; a threshold the small model cannot reach fails the run, its manifest saying why."""
    dag = fresh_dag(local_dag)
    lines = [line for line in SAMPLE.read_text().splitlines(keepends=True) if len(line) < 400]
    (tmp_path / "reviews.jsonl").write_text("".join(lines[:3]))
    # known labels no answer can match (not the schema's): accuracy 0, whatever the model says
    golden = [{**json.loads(line), "rating_label": "mixed"} for line in lines[3:9]]
    (tmp_path / "golden.jsonl").write_text("".join(json.dumps(row) + "\n" for row in golden))
    run = dag.test(
        run_conf={
            "input_path": str(tmp_path / "reviews.jsonl"), "output_path": str(tmp_path / "out"),
            "model": "smollm2", "template": "{review}", "label_field": "rating_label",
            "golden_path": str(tmp_path / "golden.jsonl"), "min_quality": 0.5,
            "quality_measure": "accuracy",
        }
    )  # fmt: skip
    assert run.state == "failed"
    assert run.get_task_instance("llm_enrichment.publish").state == "failed"
    (manifest_path,) = list((tmp_path / "out").glob("*/*/*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    folder = manifest_path.parent
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["golden-00001", "shard-00000"]
    assert manifest["records"] == 3  # the input's; the golden set is measured, not counted
    quality = manifest["quality"]
    assert quality["golden_records"] == 6
    assert quality["passed"] is False
    assert quality["accuracy"] == 0
    assert manifest["failure"] == "quality gate: accuracy 0.0000 on 6 golden records is below min_quality 0.5"
    assert not (folder / "_SUCCESS").exists()
    assert (folder / "shard-00000" / "_SUCCESS").exists()  # the shards themselves succeeded
