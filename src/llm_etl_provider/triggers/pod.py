"""The enrichment pod's trigger: KubernetesPodTrigger, whose periodic logs leave out the sealed frames."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger

from llm_etl_provider.transport.frames import carries_frame


class FrameFilteringAsyncKubernetesHook(AsyncKubernetesHook):
    """The triggerer's hook: a pod's log lines, without the lines that carry frames."""

    async def read_logs(self, *args: Any, **kwargs: Any) -> list[str]:
        lines: list[str] = await super().read_logs(*args, **kwargs)
        return [line for line in lines if not carries_frame(line)]


class FrameFilteringPodTrigger(KubernetesPodTrigger):
    """KubernetesPodTrigger for the enrichment pod. With ``logging_interval``, the triggerer copies the
    worker's log into the task log every interval, and that log carries the sealed result frames: it reads the
    log through :class:`FrameFilteringAsyncKubernetesHook`."""

    @classmethod
    def from_trigger(cls, trigger: KubernetesPodTrigger) -> FrameFilteringPodTrigger:
        return cls(**trigger.serialize()[1])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    @cached_property
    def hook(self) -> AsyncKubernetesHook:
        return FrameFilteringAsyncKubernetesHook(
            conn_id=self.kubernetes_conn_id,
            in_cluster=self.in_cluster,
            config_dict=self.config_dict,
            cluster_context=self.cluster_context,
            connection_extras=self.connection_extras,
        )
