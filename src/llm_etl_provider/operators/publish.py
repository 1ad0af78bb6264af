"""PublishRunOperator: the run's manifest and, when every shard succeeded, the run's ``_SUCCESS``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath, XComArg

from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import RunIncompleteError
from llm_etl_provider.operators.base import RunStepOperator, backend_for
from llm_etl_provider.transport.extract import SUCCEEDED
from llm_etl_provider.transport.run_manifest import publish_run_manifest

if TYPE_CHECKING:
    from airflow.sdk import Context


class PublishRunOperator(RunStepOperator):
    """Write ``<output_path>/manifest.json`` over every shard the stage planned, once all their extractions
    have ended, and ``<output_path>/_SUCCESS`` when every shard succeeded; push the manifest to XCom.

    Give it the run's Asset as an outlet: it is updated once per run, and only when every shard succeeded
    (a run with a failed or missing shard fails this task, after writing the manifest that says which).

    :param output_path: the run's output folder, any ObjectStoragePath URI (templated)
    :param shards: the shard descriptors from StageInputOperator (templated)
    :param gpus_per_shard: GPUs each shard's pod held, for the manifest's GPU-seconds (None: not reported)
    and the run's ``namespace``, ``kubernetes_conn_id``, ``execution_mode``, ``local_dir`` and ``scope``
    (:class:`~llm_etl_provider.operators.base.RunStepOperator`): each shard's pods are measured from their
    status (wall time, model-load time), before the cleanup removes them
    """

    template_fields: Sequence[str] = ("output_path", "shards", "namespace", "local_dir")

    def __init__(
        self,
        *,
        output_path: str,
        shards: list[dict[str, Any]] | str | XComArg,
        gpus_per_shard: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_path = output_path
        self.shards = shards
        self.gpus_per_shard = gpus_per_shard

    def execute(self, context: Context) -> dict[str, Any]:
        if not isinstance(self.shards, list):
            raise TypeError(
                f"shards must be the stage's list of shard descriptors, not {type(self.shards).__name__}"
            )
        planned = [ShardDescriptor.from_xcom(shard) for shard in self.shards]
        manifest = publish_run_manifest(
            ObjectStoragePath(self.output_path),
            [(shard.index, shard.records) for shard in planned],
            run_id=str(context["run_id"]),
            gpus_per_shard=self.gpus_per_shard,
            pod_timings=backend_for(self, context).pod_timings(),
        )
        states = ", ".join(f"{n} {state}" for state, n in manifest["shard_states"].items())
        self.log.info(
            "run %s: %d shards (%s), %d results and %d dead letters; manifest at %s/manifest.json",
            manifest["run_id"], len(planned), states, manifest["results"], manifest["dead_letters"],
            self.output_path,
        )  # fmt: skip
        if manifest["state"] != SUCCEEDED:
            context["ti"].xcom_push(key="return_value", value=manifest)  # the failed task's too
            failed = [f"shard {s['shard']} {s['state']}: {s.get('failure', '')}" for s in manifest["shards"]
                      if s["state"] != SUCCEEDED]  # fmt: skip
            raise RunIncompleteError(
                "not every shard succeeded; no _SUCCESS for the run: " + "; ".join(failed)
            )
        return manifest
