#!/usr/bin/env bash
# A real Kubernetes API to try the provider on, without a cloud cluster: `scripts/dev-cluster.sh up` starts etcd,
# kube-apiserver (TLS, Node and RBAC authorization, Pod Security), one node that runs pods as local processes and
# an S3 server (SeaweedFS, bucket llm-etl), all on 127.0.0.1, and prints KUBECONFIG=..., AIRFLOW_KUBECONFIG=...,
# NAMESPACE=... and AWS_ENDPOINT_URL=..., AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=..., AWS_DEFAULT_REGION=...;
# `down` stops them. The first `up` sets the project up (scripts/setup.sh), which builds kube-apiserver, etcd and
# SeaweedFS (about 11 minutes, cached).
#
# `up --real-node` starts a real node instead: kubelet, containerd with runc and the CNI bridge, kube-scheduler and
# kube-controller-manager, running the pod's own images, which scripts/build-images.sh builds first (from Debian's
# packages: no registry) into the cache. Name them in the pod with LLM_ETL_WORKER_IMAGE=localhost/llm-etl/worker:TAG,
# LLM_ETL_SERVER_IMAGE=localhost/llm-etl/llama-server:TAG and LLM_ETL_IMAGE_PULL_POLICY=IfNotPresent.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
case "${1:-}" in
    up)
        bash scripts/setup.sh >&2
        if [[ "${2:-}" == --real-node ]]; then
            images="${CACHE_DIR}/images"
            STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" bash scripts/build-images.sh --local-base --host-certs --pause \
                --oci-dir "${images}" >&2
            exec .venv/bin/llm-etl dev-cluster up --real-node "${images}" "${@:3}"
        fi
        ;;
    down | status) ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
exec .venv/bin/llm-etl dev-cluster "$@"
