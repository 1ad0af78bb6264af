"""Patient data stays in the results: canaries planted in the input never reach what Airflow or K8s shows.

Checked on a successful run, a failing run and a run whose pod is lost mid-run and resumed by the retry:
the task logs (progress lines and exception messages included), XCom, the rendered template fields, every
pod spec and its environment, and the cluster's events. The published results are the one place they belong.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
from airflow.models.renderedtifields import RenderedTaskInstanceFields
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

from tests.e2e.conftest import (
    preempted_mid_run,
    resumable_dag,
    run_example,
    short_reviews,
)

CANARY = "CANARY-PT-7f3a9c"


def planted(tmp_path, count: int):
    """Reviews with a canary in the text, in the record id (often a patient identifier) and in a field the
    prompt does not use."""
    lines = [json.loads(line) for line in short_reviews(count)]
    for n, record in enumerate(lines):
        record["review"] = f"Patient {CANARY}-name-{n} writes: {record['review']}"
        record["mrn"] = f"{CANARY}-mrn-{n}"
        record["id"] = f"{CANARY}-id-{n}"
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return source


def airflow_surfaces(dag_id: str, run_id: str) -> str:
    """Everything Airflow stored about the run that a user or operator can read."""
    with create_session() as session:
        xcoms = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id).all()
        rendered = session.query(RenderedTaskInstanceFields).filter_by(dag_id=dag_id, run_id=run_id).all()
        assert xcoms, "the run pushed no XCom at all"
        return json.dumps(
            {
                "xcom": [str(x.value) for x in xcoms],
                "rendered": [json.dumps(r.rendered_fields, default=str) for r in rendered],
            }
        )


def cluster_surfaces(cluster: Any) -> str:
    return json.dumps({"pods": cluster.created_pods(), "events": cluster.events()}, default=str)


@pytest.mark.parametrize("case", ["success", "failed", "retried"])
def test_canaries_appear_only_in_the_published_results(tmp_path, capfd, cluster, kubernetes_dag, case):
    # retried: enough records that the preemption (after 2 checkpoints) comes well before the last one
    count = 12 if case == "retried" else 2
    source = planted(tmp_path, count)
    dag = resumable_dag(kubernetes_dag) if case == "retried" else kubernetes_dag(deferrable=False)
    cluster.forget_pods()
    preemption: AbstractContextManager[dict[str, int]] = (
        preempted_mid_run(cluster, after_checkpoints=2, records=count)
        if case == "retried"
        else nullcontext({})
    )
    with preemption as lost:
        # the failing run's template names a field no record has: every record is dead-lettered
        template = "{review} {no_such_field}" if case == "failed" else "{review}"
        conf = {"concurrency": 1} if case == "retried" else {}
        run = run_example(dag, source, tmp_path / "out", template=template, **conf)
    task_log = "".join(capfd.readouterr())
    states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert run.state == ("failed" if case == "failed" else "success"), f"{states}\n{task_log[-8000:]}"
    assert len(lost) == (case == "retried"), states
    assert "[base]" in task_log  # the worker's lines did reach the task log
    assert CANARY not in task_log
    assert CANARY not in airflow_surfaces(dag.dag_id, run.run_id)
    assert CANARY not in cluster_surfaces(cluster)
    published = list((tmp_path / "out").rglob("results.jsonl"))
    if case != "failed":
        (results,) = published
        ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
        assert ids == [
            f"{CANARY}-id-{n}" for n in range(count)
        ]  # where it belongs: the checks above can fail
    else:  # the failed shard is published for inspection: no results, its dead letters, no _SUCCESS
        (results,) = published
        assert results.read_text() == ""
        assert len((results.parent / "dead_letter.jsonl").read_text().splitlines()) == count
        assert not list((tmp_path / "out").rglob("_SUCCESS"))
    assert cluster.wait_until_empty() == {}
    cluster.forget_events({p["metadata"]["name"] for p in cluster.created_pods()})
