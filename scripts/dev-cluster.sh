#!/usr/bin/env bash
# A real Kubernetes cluster to try the provider on, without a cloud: `scripts/dev-cluster.sh up` starts etcd and
# kube-apiserver (TLS, Node and RBAC authorization, Pod Security) on 127.0.0.1, kube-controller-manager,
# kube-scheduler and one real node (a kubelet with containerd, runc and a CNI bridge) running the pod's own
# images, a volume provisioner (the default StorageClass) and an S3 server (SeaweedFS, bucket llm-etl), and
# prints KUBECONFIG=..., AIRFLOW_KUBECONFIG=..., NAMESPACE=... and AWS_ENDPOINT_URL=..., AWS_ACCESS_KEY_ID=...,
# AWS_SECRET_ACCESS_KEY=..., AWS_DEFAULT_REGION=...; `down` stops them and leaves no process, mount, network
# namespace or cgroup behind. Needs root (containerd, runc, the bridge).
#
# The first `up` sets the project up (scripts/setup.sh: kube-apiserver, etcd, the node's programs and SeaweedFS
# built from their Go modules, cached) and builds the images with scripts/build-images.sh (from Debian's packages:
# no registry) into the cache. Name them in the pod with AIRFLOW__LLM_ETL__WORKER_IMAGE=localhost/llm-etl/worker:TAG,
# AIRFLOW__LLM_ETL__SERVER_IMAGE=localhost/llm-etl/llama-server:TAG and AIRFLOW__LLM_ETL__IMAGE_PULL_POLICY=IfNotPresent
# (the example DAG's [llm_etl] options; TAG: the project's version; the build prints the references).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
case "${1:-}" in
    up)
        bash scripts/setup.sh >&2
        images="${CACHE_DIR}/images"
        STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" bash scripts/build-images.sh --local-base --host-certs --pause \
            --oci-dir "${images}" >&2
        exec .venv/bin/llm-etl-dev dev-cluster up --images "${images}" "${@:2}"
        ;;
    down | status) ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
exec .venv/bin/llm-etl-dev dev-cluster "$@"
