"""What every operator of a run shares: where the run's resources are (a backend), chosen once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from airflow.sdk import BaseOperator, ObjectStoragePath

from llm_etl_provider.backends import (
    DEFAULT_EXECUTION_MODE,
    DEFAULT_KUBERNETES_CONN_ID,
    DEFAULT_NAMESPACE,
    RunBackend,
    TaskLog,
    checked_execution_mode,
    run_backend,
)
from llm_etl_provider.contract import layout

if TYPE_CHECKING:
    from airflow.sdk import Context


class RunScoped(Protocol):
    """An operator that works on one run's resources."""

    @property
    def dag_id(self) -> str: ...

    @property
    def execution_mode(self) -> str: ...

    @property
    def namespace(self) -> str | None: ...

    @property
    def kubernetes_conn_id(self) -> str | None: ...

    @property
    def local_dir(self) -> str | None: ...

    @property
    def run_scope(self) -> str: ...

    @property
    def log(self) -> TaskLog: ...


def backend_for(operator: RunScoped, context: Context, **options: Any) -> RunBackend:
    """The backend of ``operator``'s execution mode for the run of ``context``."""
    return run_backend(
        operator.execution_mode,
        dag_id=operator.dag_id,
        run_id=str(context["run_id"]),
        namespace=operator.namespace,
        kubernetes_conn_id=operator.kubernetes_conn_id,
        local_dir=operator.local_dir,
        scope=operator.run_scope,
        log=operator.log,
        **options,
    )


class RunStepOperator(BaseOperator):
    """A step of a run (stage, extract, cleanup) that reaches the run's resources through its backend.

    :param namespace: the run's namespace (templated)
    :param kubernetes_conn_id: the Kubernetes connection
    :param execution_mode: ``kubernetes`` or ``local``
    :param local_dir: local execution's staging folder (templated)
    :param scope: the pipeline's task group in the DAG (:func:`~llm_etl_provider.contract.layout.run_scope`;
        set by ``llm_enrichment_task_group``): the same for every step of one pipeline
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        kubernetes_conn_id: str = DEFAULT_KUBERNETES_CONN_ID,
        execution_mode: str = DEFAULT_EXECUTION_MODE,
        local_dir: str | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scope = scope
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.execution_mode = checked_execution_mode(execution_mode)
        self.local_dir = local_dir

    @property
    def run_scope(self) -> str:
        """Whose runs this step works on: its DAG and pipeline (``layout.run_scope``)."""
        return layout.run_scope(self.dag_id, self.scope)

    def run_output(self, context: Context) -> ObjectStoragePath:
        """Where this run publishes: ``<output_path>/<dag>/<group>/<run>/`` (``layout.run_output_folder``)."""
        output_path = getattr(self, "output_path", None)
        if not output_path:
            raise ValueError(f"{self.task_id} needs output_path")
        try:
            folder = layout.run_output_folder(self.run_scope, str(context["run_id"]))
        except ValueError as exc:
            raise ValueError(f"{self.task_id}: {exc}") from None
        return ObjectStoragePath(str(output_path)) / folder
