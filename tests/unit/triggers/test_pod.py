"""The enrichment pod's trigger renews an object-transport shard's URLs while it watches the pod."""

from __future__ import annotations

import asyncio
import importlib

import pytest
from airflow.sdk.exceptions import TaskDeferred
from kubernetes.client import models as k8s

from tests.unit.operators.test_enrichment import operator


def test_the_deferred_trigger_renews_the_object_transport_urls_while_it_watches(monkeypatch):
    """Issue 23 (9): a deferred enrichment has no task process left to renew its pod's URLs: the trigger
    does it, at the operator's interval, for as long as it watches the pod, and stops when it ends."""
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
    from airflow.triggers.base import TriggerEvent

    from llm_etl_provider.triggers import pod as trigger_module

    renewed: list[dict] = []

    class Renewer:
        def __init__(self, renewal):
            self.renewal = renewal

        def renew(self):
            renewed.append(self.renewal)

    monkeypatch.setattr(trigger_module, "renewer_of", lambda renewal, backend, log: Renewer(renewal))

    async def watch(self):
        await asyncio.sleep(0.6)  # the pod runs
        yield TriggerEvent({"status": "success"})

    monkeypatch.setattr(KubernetesPodTrigger, "run", watch)
    renewal = {
        "index": 2, "source": "s3://c@b/in.jsonl", "parts": "s3://c@b/out/_transport/p/shard-00002",
        "plan": "p" * 16, "scope": "dag/group", "dag_id": "dag", "run_id": "r", "pod_time_limit_seconds": 600,
        "interval": 0.05,
    }  # fmt: skip
    op = operator(deferrable=True)
    op.pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="pod", namespace="etl"))
    op._url_renewal = renewal
    with pytest.raises(TaskDeferred) as deferred:
        op.invoke_defer_method()
    classpath, kwargs = deferred.value.trigger.serialize()
    assert kwargs["url_renewal"] == renewal  # the triggerer rebuilds the trigger from these
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**kwargs)

    async def events():
        found = [event async for event in trigger.run()]
        count = len(renewed)
        await asyncio.sleep(0.2)
        assert len(renewed) == count  # stopped with the watch
        return found

    assert [event.payload["status"] for event in asyncio.run(events())] == ["success"]
    assert len(renewed) >= 3
    assert renewed[0]["index"] == 2
