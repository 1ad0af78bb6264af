#!/usr/bin/env bash
# A real Kubernetes API to try the provider on, without a cloud cluster: `scripts/dev-cluster.sh up` starts etcd,
# kube-apiserver (TLS, Node and RBAC authorization, Pod Security), one node that runs pods as local processes and
# an S3 server (SeaweedFS, bucket llm-etl), all on 127.0.0.1, and prints KUBECONFIG=..., AIRFLOW_KUBECONFIG=...,
# NAMESPACE=... and AWS_ENDPOINT_URL=..., AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=..., AWS_DEFAULT_REGION=...;
# `down` stops them. The first `up` sets the project up (scripts/setup.sh), which builds kube-apiserver, etcd and
# SeaweedFS (about 11 minutes, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    up)
        bash scripts/setup.sh >&2
        ;;
    down | status) ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
exec .venv/bin/llm-etl dev-cluster "$@"
