"""The enrichment pod's trigger for the object transport: KubernetesPodTrigger, which also renews the
shard's URLs while it watches the pod."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.triggers.base import TriggerEvent

from llm_etl_provider.backends.urls import UrlRenewer, renewer_of


class UrlRenewingPodTrigger(KubernetesPodTrigger):
    """KubernetesPodTrigger that, given ``url_renewal`` (the object transport), signs the shard's URLs afresh
    every ``interval`` seconds while it watches the pod, as the task does when it is not deferred."""

    def __init__(self, *args: Any, url_renewal: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url_renewal = url_renewal

    @classmethod
    def from_trigger(
        cls, trigger: KubernetesPodTrigger, *, url_renewal: dict[str, Any] | None = None
    ) -> UrlRenewingPodTrigger:
        return cls(**trigger.serialize()[1], url_renewal=url_renewal)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            **kwargs,
            "url_renewal": self.url_renewal,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if not self.url_renewal:
            async for event in super().run():
                yield event
            return
        renewing = asyncio.create_task(self._renew_urls(self.url_renewal))
        try:
            async for event in super().run():
                yield event
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew_urls(self, renewal: dict[str, Any]) -> None:
        from llm_etl_provider.backends.kubernetes import KubernetesBackend

        interval = float(renewal["interval"])
        renewer: UrlRenewer | None = None  # made once (it reads the shard's plan), then reused
        while True:
            await asyncio.sleep(interval)
            try:
                if renewer is None:
                    backend = KubernetesBackend(
                        self.pod_namespace,
                        self.kubernetes_conn_id,
                        dag_id=renewal["dag_id"],
                        run_id=renewal["run_id"],
                        log=self.log,
                        scope=renewal["scope"],
                        plan=renewal["plan"],
                    )
                    # the signers and the Kubernetes client are synchronous: off the triggerer's event loop
                    renewer = await asyncio.to_thread(renewer_of, renewal, backend, self.log)
                await asyncio.to_thread(renewer.renew)
            except Exception as exc:  # noqa: BLE001 - the next interval tries again; the worker waits
                self.log.warning(
                    "renewing the shard's URLs failed (%s): trying again in %.0f s", exc, interval
                )
