"""What both enrichment operators share (Kubernetes and local): one try of one shard, its worker's settings
as keyword arguments, and the renewal of its URLs. Nothing here imports KubernetesPodOperator."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_etl_provider.backends import RunBackend
from llm_etl_provider.backends.urls import renewer_of
from llm_etl_provider.contract import layout
from llm_etl_provider.contract.invocation import (
    OBJECT_OUTPUT,
    WORKER_SETTINGS,
    WorkerInvocation,
    default_of,
    is_unset,
)
from llm_etl_provider.contract.shard import ShardDescriptor
from llm_etl_provider.exceptions import PodSpecError
from llm_etl_provider.pod.builder import ServerSpec, pod_invocation

if TYPE_CHECKING:
    from airflow.sdk import Context


def with_keywords(signature: inspect.Signature, defaults: dict[str, Any]) -> inspect.Signature:
    """``signature`` with keyword-only parameters added before its ``**kwargs``."""
    parameters = list(signature.parameters.values())
    variadic = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    named = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in defaults.items()
    ]
    return signature.replace(parameters=[*named, *added, *variadic])


def with_worker_settings(init: Any) -> inspect.Signature:
    """An enrichment operator's ``__init__`` signature, the worker's settings (declared once, in the contract)
    listed after its own arguments: they are keyword arguments of their own, so that ``.partial()`` accepts
    them and refuses a typo."""
    return with_keywords(inspect.signature(init), {name: default_of(name) for name in WORKER_SETTINGS})


def take_worker_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The worker's settings among an operator's keyword arguments (removed from them), defaults filled in."""
    return {name: kwargs.pop(name) if name in kwargs else default_of(name) for name in WORKER_SETTINGS}


def optional_int(value: Any, name: str) -> int | None:
    """A templated integer setting, or None where it is unset (:func:`is_unset`)."""
    if is_unset(value):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PodSpecError(f"{name} must be an integer, not {value!r}") from None


@dataclass(frozen=True)
class ShardRun:
    """One try of one shard's enrichment, as both execution modes name and invoke it.

    :param scope: the pipeline's scope (:func:`~llm_etl_provider.contract.layout.run_scope`)
    :param attempt: the task's try: the worker seals it into its trailer, KPO labels the pod with it
    """

    scope: str
    dag_id: str
    run_id: str
    shard: ShardDescriptor
    attempt: int = default_of("attempt")

    @classmethod
    def of(cls, shard: Any, *, scope: str, dag_id: str, context: Context | None) -> ShardRun:
        return cls(
            scope=scope,
            dag_id=dag_id,
            run_id=str(context["run_id"]) if context is not None else "dry-run",
            shard=ShardDescriptor.from_xcom(shard),
            attempt=context["ti"].try_number if context is not None else default_of("attempt"),
        )

    @property
    def prefix(self) -> str:
        """The names' prefix of the shard's plan (of the run, for a shard staged without a plan)."""
        if self.shard.plan:
            return layout.plan_prefix(self.scope, self.run_id, self.shard.plan)
        return layout.run_prefix(self.scope, self.run_id)

    def invocation(self, settings: Mapping[str, Any], server: ServerSpec, model: str) -> WorkerInvocation:
        """The worker's invocation in the shard's pod (local execution swaps in local paths)."""
        return pod_invocation(
            settings, run_id=self.run_id, shard=self.shard, server=server, model=model, attempt=self.attempt
        )

    def url_renewal(self, interval: int, pod_time_limit_seconds: int) -> dict[str, Any] | None:
        """The object transport: how the shard's URLs are signed afresh while its worker runs (the task does
        it, or deferred, its trigger: the description travels serialized); None for the log transport."""
        if self.shard.transport != OBJECT_OUTPUT:
            return None
        return {
            "index": self.shard.index,
            "source": self.shard.source,
            "parts": self.shard.parts,
            "plan": self.shard.plan,
            "scope": self.scope,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "pod_time_limit_seconds": pod_time_limit_seconds,
            "interval": interval,
        }


@contextmanager
def renewing_urls(renewal: dict[str, Any] | None, backend: RunBackend, log: Any) -> Iterator[None]:
    """Sign the shard's URLs when its worker starts and renew them while it runs: temporary credentials
    (STS, IRSA, SSO: often an hour) end long before a shard does."""
    if renewal is None:
        yield
        return
    renewer = renewer_of(renewal, backend, log)
    renewer.renew()
    with renewer.running(float(renewal["interval"])):
        yield
