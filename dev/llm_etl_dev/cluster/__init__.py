"""A development cluster: real kube-apiserver and etcd on 127.0.0.1, and a node running pods as processes."""

from __future__ import annotations

from llm_etl_dev.cluster.control_plane import DevCluster, DevClusterError, NodeOptions

__all__ = ["DevCluster", "DevClusterError", "NodeOptions"]
