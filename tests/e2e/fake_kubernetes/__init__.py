"""A fake Kubernetes cluster for end-to-end tests: a real HTTP API server and a kubelet of local processes."""

from __future__ import annotations

from tests.e2e.fake_kubernetes.cluster import FakeCluster

__all__ = ["FakeCluster"]
