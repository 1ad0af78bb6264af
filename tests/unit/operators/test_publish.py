"""PublishRunOperator writes the run's report beside its manifest, for a failed run too, and links it from
the task's UI ("Run report")."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.sdk import DAG, ObjectStoragePath
from airflow.serialization.definitions.operatorlink import XComOperatorLink
from airflow.serialization.serialized_objects import DagSerialization

from llm_etl_provider.contract.layout import run_output_folder
from llm_etl_provider.exceptions import RunIncompleteError
from llm_etl_provider.get_provider_info import get_provider_info
from llm_etl_provider.hooks.object_store import MAX_EXPIRY_SECONDS
from llm_etl_provider.operators.publish import PublishRunOperator, RunReportLink, report_link
from tests.unit.transport.test_report import RUN, Page, dead_letter, planned, publish_shard, result

# the Task SDK hands get_link its task instance, which has a key's fields
KEY: Any = TaskInstanceKey(dag_id="llm_enrichment", task_id="publish", run_id=RUN, try_number=1)


def publisher(tmp_path, *records: int) -> tuple[DAG, PublishRunOperator]:
    with DAG("llm_enrichment", schedule=None) as dag:
        op = PublishRunOperator(
            task_id="publish",
            output_path=str(tmp_path / "out"),
            shards=[shard.to_xcom() for shard in planned(*records)],
            execution_mode="local",
            local_dir=str(tmp_path / "staging"),
        )
    return dag, op


def run_folder(tmp_path):
    return tmp_path / "out" / run_output_folder("llm_enrichment", RUN)


def test_a_succeeded_run_has_its_report_named_in_the_manifest_and_linked(tmp_path):
    _, op = publisher(tmp_path, 2)
    publish_shard(
        run_folder(tmp_path), 0, [result(0, {"sentiment": "neutral"}), result(1, {"sentiment": "x"})], []
    )
    manifest = op.execute({"run_id": RUN})
    report = run_folder(tmp_path) / "report.html"
    assert manifest["report"] == "report.html"
    assert (run_folder(tmp_path) / "_SUCCESS").exists()
    assert "Run summary" in Page(report.read_text()).headings
    assert RunReportLink().get_link(op, ti_key=KEY) == report.resolve().as_uri()


def test_a_failed_run_writes_its_report_and_link_before_it_fails(tmp_path):
    _, op = publisher(tmp_path, 2, 3)  # shard 1 publishes nothing
    publish_shard(run_folder(tmp_path), 0, [result(0, {"sentiment": "neutral"})], [dead_letter(0, "timeout")])
    pushed: list[dict] = []
    context: Any = {"run_id": RUN, "ti": SimpleNamespace(xcom_push=lambda **kwargs: pushed.append(kwargs))}
    with pytest.raises(RunIncompleteError, match="shard 1 missing"):
        op.execute(context)
    report = run_folder(tmp_path) / "report.html"
    assert "missing" in Page(report.read_text()).words("summary")
    assert pushed[0]["value"]["report"] == "report.html"
    assert json.loads((run_folder(tmp_path) / "manifest.json").read_text())["report"] == "report.html"
    assert RunReportLink().get_link(op, ti_key=KEY) == report.resolve().as_uri()


def test_no_report_no_link(tmp_path):
    _, op = publisher(tmp_path, 1)
    assert RunReportLink().get_link(op, ti_key=KEY) == ""


def test_the_link_is_what_airflow_serializes_and_its_api_server_reads_from_xcom(tmp_path):
    """Airflow stores an operator's links by name and XCom key in the serialized DAG; its API server reads
    each link's URL from that XCom, which the task's worker pushed when the task ended."""
    dag, _ = publisher(tmp_path, 1)
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task("publish")
    assert served.extra_links == ["Run report"]
    link = served.operator_extra_link_dict["Run report"]
    assert isinstance(link, XComOperatorLink)
    assert link.xcom_key == RunReportLink().xcom_key
    assert "llm_etl_provider.operators.publish.RunReportLink" in get_provider_info()["extra-links"]


def test_a_local_report_s_link_is_a_file_url(tmp_path):
    path = ObjectStoragePath(str(tmp_path / "a run" / "report.html"))
    assert report_link(path) == ((tmp_path / "a run" / "report.html").as_uri(), None)
    assert report_link(path)[0].startswith("file:///")
    assert "%20" in report_link(path)[0]


def test_an_s3_report_s_link_is_a_pre_signed_get_valid_for_seven_days(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.test")
    before = datetime.now(UTC)
    url, expires = report_link(ObjectStoragePath("s3://bucket/out/run/report.html"))
    parts = urlsplit(url)
    assert (parts.scheme, parts.path) == ("https", "/bucket/out/run/report.html")
    query = parse_qs(parts.query)
    assert "Signature" in query  # botocore's signature for a custom endpoint (X-Amz-Signature on AWS)
    assert expires is not None
    assert before + timedelta(seconds=MAX_EXPIRY_SECONDS) <= expires <= datetime.now(UTC) + timedelta(days=7)
    assert abs(int(query["Expires"][0]) - expires.timestamp()) < 60  # the URL's own end is the one stated


def test_a_report_in_a_store_without_signed_urls_is_linked_by_its_uri():
    assert report_link(ObjectStoragePath("memory://bucket/run/report.html")) == (
        "memory://bucket/run/report.html",
        None,
    )
