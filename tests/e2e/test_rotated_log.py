"""A pod log the kubelet rotated mid-run (containerLogMaxSize): the extraction refuses the cut stream,
publishes nothing and does not retry; the run fails and its teardown still removes everything. The error
names no record (canaries planted in the input)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import ProviderCluster
from tests.e2e.conftest import provider_cluster, run_example
from tests.e2e.test_no_patient_data_leaks import CANARY, airflow_surfaces, planted


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_url, images) -> Iterator[ProviderCluster]:
    # A few hundred bytes: the worker's first frames are rotated away before the pod ends.
    with provider_cluster(
        tmp_path_factory.mktemp("cluster"), model_url, images, max_log_bytes=400
    ) as running:
        yield running


def test_a_rotated_pod_log_fails_the_extraction_and_publishes_nothing(
    tmp_path, capfd, cluster, kubernetes_dag
):
    # a frame per record, one record at a time, for seconds: the kubelet checks the log every 3 s
    source = planted(tmp_path, 30)
    dag = kubernetes_dag(deferrable=False, checkpoint_every="1")

    run = run_example(dag, source, tmp_path / "out", concurrency=1)

    assert run.state == "failed"
    task_log = "".join(capfd.readouterr())
    assert "nothing was published" in task_log
    assert "rotated" in task_log  # the error says what most likely happened
    rejected = "llm_etl_provider.exceptions.FrameStreamRejectedError"
    refused = [line for line in task_log.splitlines() if line.startswith(rejected)]
    assert len(refused) == 1, refused  # refused once: no retry of a log that cannot change
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.jsonl"))
    assert CANARY not in task_log  # the extract error text included
    assert CANARY not in airflow_surfaces(dag.dag_id, run.run_id)
    assert cluster.wait_until_empty() == {}
