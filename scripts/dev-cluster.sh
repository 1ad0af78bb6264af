#!/usr/bin/env bash
# A real Kubernetes API to try the provider on, without a cloud cluster: `scripts/dev-cluster.sh up` starts etcd,
# kube-apiserver (TLS, Node and RBAC authorization, Pod Security) and one node that runs pods as local processes,
# all on 127.0.0.1, and prints KUBECONFIG=..., AIRFLOW_KUBECONFIG=... and NAMESPACE=...; `down` stops them.
# The first `up` sets the project up (scripts/setup.sh) and builds kube-apiserver and etcd (about 6 minutes, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    up)
        bash scripts/setup.sh >&2
        bash scripts/build-kube.sh >/dev/null
        ;;
    down | status) ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
exec .venv/bin/llm-etl dev-cluster "$@"
