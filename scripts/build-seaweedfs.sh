#!/usr/bin/env bash
# Build SeaweedFS's `weed` (an Apache-2.0 S3-compatible object store) from its Go module, and cache the binary
# outside the repo, as scripts/build-kube.sh does for kube-apiserver and etcd: the development cluster's and the
# tests' S3 server (scripts/setup.sh calls this).
#
# Prints the bin folder on stdout; a cached build is reused. Nothing is downloaded but Go modules (about 3.7 GB
# of them, in a temporary folder deleted afterwards), checked against the checksum database.
#
# The module publishes no tagged release that the proxy lists, so the version is the pseudo-version the Go
# module proxy serves (env/packages/go-partial.tsv). Its go.mod has one `replace` line, which a main module must
# repeat: `go install ...@version` refuses modules with replace lines, so the build goes through a wrapper.
set -euo pipefail

SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"
CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
PREFIX="${CACHE_DIR}/seaweedfs-${SEAWEEDFS_VERSION}"
BIN="${PREFIX}/bin"

if [[ -x "${BIN}/weed" ]]; then
    echo "${BIN}"
    exit 0
fi
# Go 1.26 on PATH (its go.mod says `go 1.26.6`); private caches in a temporary folder, removed on exit
source "$(dirname "$0")/go-env.sh" build-seaweedfs 26

echo "build-seaweedfs: fetching github.com/seaweedfs/seaweedfs ${SEAWEEDFS_VERSION}" >&2
module_mod="$(go mod download -json "github.com/seaweedfs/seaweedfs@${SEAWEEDFS_VERSION}" |
    sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
mkdir -p "${work}/wrap"
{
    printf 'module llm-etl-provider/seaweedfs-build\n\n'
    grep -E '^go ' "${module_mod}"
    printf '\nrequire github.com/seaweedfs/seaweedfs %s\n\n' "${SEAWEEDFS_VERSION}"
    grep -E '^replace ' "${module_mod}" || true
    printf '\ntool github.com/seaweedfs/seaweedfs/weed\n'
} >"${work}/wrap/go.mod"

echo "build-seaweedfs: resolving modules" >&2
(cd "${work}/wrap" && go mod tidy >"${work}/tidy.log" 2>&1) || { cat "${work}/tidy.log" >&2; exit 1; }
out="${PREFIX}.tmp/bin"
rm -rf "${PREFIX}.tmp"
mkdir -p "${out}"
echo "build-seaweedfs: building weed with ${jobs} jobs (a while; cached afterwards)" >&2
(cd "${work}/wrap" && go build -p "${jobs}" -trimpath -ldflags "-s -w" \
    -o "${out}/weed" github.com/seaweedfs/seaweedfs/weed)
cp "${GOMODCACHE}/github.com/seaweedfs/seaweedfs@${SEAWEEDFS_VERSION}/LICENSE" "${PREFIX}.tmp/LICENSE.seaweedfs"
cp "${work}/wrap/go.mod" "${PREFIX}.tmp/seaweedfs-build.go.mod"
chmod 0644 "${PREFIX}.tmp"/LICENSE.* "${PREFIX}.tmp"/*.go.mod
rm -rf "${PREFIX}"
mv "${PREFIX}.tmp" "${PREFIX}"
echo "${BIN}"
