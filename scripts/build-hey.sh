#!/usr/bin/env bash
# Build `hey` (rakyll/hey, Apache-2.0), an HTTP load generator that is not ours, from its Go module, and cache
# the binary outside the repo: the pipeline benchmark measures the LLM server's raw capacity with it
# (benchmarks/bench_efficiency.py). Not part of the tests' setup.
#
# Prints the binary's path on stdout; a cached build is reused.
set -euo pipefail

HEY_VERSION="v0.1.4"
CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
BIN="${CACHE_DIR}/hey-${HEY_VERSION}/bin"

if [[ -x "${BIN}/hey" ]]; then
    echo "${BIN}/hey"
    exit 0
fi
source "$(dirname "$0")/go-env.sh" build-hey 21
echo "build-hey: building github.com/rakyll/hey ${HEY_VERSION}" >&2
mkdir -p "${BIN}.tmp"
GOBIN="${BIN}.tmp" go install "github.com/rakyll/hey@${HEY_VERSION}" >&2
rm -rf "${BIN}"
mv "${BIN}.tmp" "${BIN}"
echo "${BIN}/hey"
