"""PublishRunOperator: the run's manifest, its report and, when every shard succeeded, the run's ``_SUCCESS``;
and the report's link in the task's UI (:class:`RunReportLink`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink, ObjectStoragePath, XComArg
from airflow.sdk.exceptions import AirflowFailException

from llm_etl_provider.contract.invocation import is_unset
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import RunIncompleteError
from llm_etl_provider.hooks.object_store import MAX_EXPIRY_SECONDS, signer_for
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.transport.extract import SUCCEEDED
from llm_etl_provider.transport.quality import DEFAULT_QUALITY_MEASURE, QUALITY_MEASURES
from llm_etl_provider.transport.run_manifest import publish_run_manifest

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

LOCAL_PROTOCOLS = ("", "file", "local")
SIGNED_PROTOCOLS = ("s3", "s3a", "gs", "gcs")


class RunReportLink(BaseOperatorLink):
    """The run's ``report.html``, as the publish task's extra link "Run report".

    Airflow asks for it once the task has ended, succeeded or failed, on its worker, and keeps it in XCom for
    the UI (:func:`report_link` made it while the task ran); empty when no report was written.
    """

    name = "Run report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(getattr(operator, "report_link", None) or "")


def report_link(report: ObjectStoragePath) -> tuple[str, datetime | None]:
    """Where a browser opens ``report``, and until when: a ``file://`` URL for a local output, a pre-signed
    HTTPS GET valid for 7 days (the most a signature allows) for ``s3://`` and ``gs://``, else its URI
    (which no browser opens: ``memory://`` ...)."""
    protocol = str(report.protocol or "")
    if protocol in LOCAL_PROTOCOLS:
        return Path(report.path).absolute().as_uri(), None
    if protocol in SIGNED_PROTOCOLS:
        expires = datetime.now(UTC) + timedelta(seconds=MAX_EXPIRY_SECONDS)
        signed = signer_for(report).sign(report.bucket, report.key, "GET", MAX_EXPIRY_SECONDS)
        return signed, expires
    return str(report), None


class PublishRunOperator(RunStepOperator):
    """Write the run's ``manifest.json`` over every shard the stage planned, once all their extractions have
    ended, its ``report.html`` beside it, and the run's ``_SUCCESS`` when every shard succeeded; push the
    manifest (which names the report) to XCom. The task's extra link "Run report" (:class:`RunReportLink`)
    opens the report, whether the run succeeded or failed.

    Bound to the plan: a shard counts only if its published manifest names the stage's plan, its staged
    input digest and its planned record count; shard folders of another plan (an earlier execution of the
    run) or of shards the plan lacks are removed (:mod:`~llm_etl_provider.transport.run_manifest`). It
    reads and writes object storage and the pods' status only, so a retry publishes the same run.

    Give it the run's Asset as an outlet: it is updated once per run, and only when every shard succeeded
    (a run with a failed or missing shard fails this task, after writing the manifest that says which).

    :param output_path: the pipeline's output folder, any ObjectStoragePath URI (templated); the run's is
        ``<output_path>/<dag>/<group>/<run>/`` (:meth:`~RunStepOperator.run_output`)
    :param shards: the shard descriptors from StageInputOperator (templated)
    :param gpus_per_shard: GPUs each shard's pod held, for the manifest's GPU-seconds (None: not reported)
    :param min_quality: the quality gate's threshold (templated): with a golden set among the shards (the
        stage's ``golden_path``), a run whose ``quality_measure`` (``accuracy``, ``macro_f1`` or
        ``macro_recall``: :mod:`~llm_etl_provider.transport.quality`) on it is lower gets no ``_SUCCESS``,
        and this task fails saying the measure; None: measured and reported, never gating
    and the run's ``namespace``, ``kubernetes_conn_id``, ``execution_mode``, ``local_dir`` and ``scope``
    (:class:`~llm_etl_provider.operators.base.RunStepOperator`): each shard's pods are measured from their
    status (wall time, model-load time), before the cleanup removes them
    """

    template_fields: Sequence[str] = (
        "output_path", "shards", "namespace", "local_dir", "min_quality", "quality_measure",
    )  # fmt: skip
    operator_extra_links = (RunReportLink(),)

    def __init__(
        self,
        *,
        output_path: str,
        shards: list[dict[str, Any]] | str | XComArg,
        gpus_per_shard: int | None = None,
        min_quality: float | str | None = None,
        quality_measure: str = DEFAULT_QUALITY_MEASURE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_path = output_path
        self.shards = shards
        self.gpus_per_shard = gpus_per_shard
        self.min_quality = min_quality
        self.quality_measure = quality_measure
        self.report_link: str | None = None  # set once the report is written (RunReportLink)

    def execute(self, context: Context) -> dict[str, Any]:
        if not isinstance(self.shards, list):
            raise TypeError(
                f"shards must be the stage's list of shard descriptors, not {type(self.shards).__name__}"
            )
        planned = [ShardDescriptor.from_xcom(shard) for shard in self.shards]
        if self.quality_measure not in QUALITY_MEASURES:
            raise AirflowFailException(
                f"quality_measure must be one of {', '.join(QUALITY_MEASURES)}, not {self.quality_measure!r}"
            )
        try:
            threshold = None if is_unset(self.min_quality) else float(str(self.min_quality))
        except ValueError:
            raise AirflowFailException(f"min_quality must be a number, not {self.min_quality!r}") from None
        output = self.run_output(context)
        manifest = publish_run_manifest(
            output,
            planned,
            run_id=str(context["run_id"]),
            gpus_per_shard=self.gpus_per_shard,
            pod_timings=backend_for(self, context, plan=_one_plan(planned)).pod_timings(),
            min_quality=threshold,
            quality_measure=self.quality_measure,
        )
        states = ", ".join(f"{n} {state}" for state, n in manifest["shard_states"].items())
        self.log.info(
            "run %s: %d shards (%s), %d results and %d dead letters; manifest at %s/manifest.json",
            manifest["run_id"], len(planned), states, manifest["results"], manifest["dead_letters"],
            output,
        )  # fmt: skip
        self._link_report(output / manifest["report"])
        if manifest["state"] != SUCCEEDED:
            context["ti"].xcom_push(key="return_value", value=manifest)  # the failed task's too
            if "failure" in manifest:  # the quality gate
                raise RunIncompleteError(f"no _SUCCESS for the run: {manifest['failure']}")
            failed = [f"shard {s['shard']} {s['state']}: {s.get('failure', '')}" for s in manifest["shards"]
                      if s["state"] != SUCCEEDED]  # fmt: skip
            raise RunIncompleteError(
                "not every shard succeeded; no _SUCCESS for the run: " + "; ".join(failed)
            )
        return manifest

    def _link_report(self, report: ObjectStoragePath) -> None:
        """Make the report's link for the task's UI. A link that cannot be signed fails nothing: the run is
        published; the link is then the report's URI."""
        try:
            self.report_link, expires = report_link(report)
        except Exception as exc:  # noqa: BLE001 - the signer: a missing provider, credentials, its SDK's errors
            self.report_link, expires = str(report), None
            self.log.warning("the run's report at %s cannot be signed for a browser (%s)", report, exc)
        if expires is not None:
            self.log.info(
                "run report: %s (a pre-signed GET, valid until %s)",
                report, expires.isoformat(timespec="seconds"),
            )  # fmt: skip
        else:
            self.log.info("run report: %s", self.report_link)


def _one_plan(shards: list[ShardDescriptor]) -> str | None:
    """The plan the shards belong to (None where they name none, or several)."""
    plans = {shard.plan for shard in shards}
    return plans.pop() if len(plans) == 1 else None
