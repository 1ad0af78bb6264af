#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` from the MIT-licensed llama-cpp-python sdist and cache it outside the repo.
#
# Prints the binary's path on stdout. A cached build is reused; the first build takes ~10-15 minutes on 2 cores.
# GGML_NATIVE=OFF keeps the binary portable to any x86-64 machine with AVX2, so a cache may be shared.
set -euo pipefail

VERSION="0.3.36"
SDIST="llama_cpp_python-${VERSION}.tar.gz"
SDIST_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/${SDIST}"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
PREFIX="${CACHE_DIR}/llama-server-${VERSION}"
BINARY="${PREFIX}/bin/llama-server"

if [[ -x "${BINARY}" ]]; then
    echo "${BINARY}"
    exit 0
fi

for tool in cmake c++ curl tar; do
    command -v "${tool}" >/dev/null || { echo "build-llama-server: '${tool}' is required (apt-get install cmake g++ curl)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
echo "build-llama-server: downloading ${SDIST}" >&2
curl -fsSL --retry 3 -o "${work}/${SDIST}" "${SDIST_URL}"
echo "${SDIST_SHA256}  ${work}/${SDIST}" | sha256sum --check --quiet - >&2
tar -xzf "${work}/${SDIST}" -C "${work}" "llama_cpp_python-${VERSION}/vendor/llama.cpp"
src="${work}/llama_cpp_python-${VERSION}/vendor/llama.cpp"

jobs="${LLM_ETL_BUILD_JOBS:-$(nproc)}"
echo "build-llama-server: building llama-server with ${jobs} jobs (this takes a while; cached afterwards)" >&2
cmake -S "${src}" -B "${work}/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF >&2
cmake --build "${work}/build" --target llama-server -j "${jobs}" >&2

mkdir -p "${PREFIX}.tmp/bin"
install -m 0755 "${work}/build/bin/llama-server" "${PREFIX}.tmp/bin/llama-server"
cp "${src}/LICENSE" "${PREFIX}.tmp/LICENSE"
rm -rf "${PREFIX}"
mv "${PREFIX}.tmp" "${PREFIX}"
echo "${BINARY}"
