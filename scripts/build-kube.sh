#!/usr/bin/env bash
# Build a real Kubernetes control plane -- `kube-apiserver` from k8s.io/kubernetes and `etcd` from
# go.etcd.io/etcd/server/v3 -- from Go modules, and cache the binaries outside the repo.
#
# Prints the bin folder on stdout. A cached build is reused; the first build takes about 6 minutes on 2 cores with
# 1.8 GB of memory at most (scripts/dev-cluster-notes.md has the measured numbers). Nothing is downloaded but Go
# modules, through the Go module proxy, checked against the checksum database.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` refuses to work: k8s.io/kubernetes's go.mod has `replace`
# lines pointing its k8s.io/* staging modules at ./staging/src/..., which only hold inside its own repository. So
# the build goes through a small wrapper module, generated here, whose `replace` lines point every staging module
# at its published v0.<minor>.<patch> release instead.
#
# Set LLM_ETL_KUBE_SCHEDULER=1 to build kube-scheduler into the same folder too (35 s more in the same build; asked
# for after a build without it, everything is built afresh, and the binaries already there are kept), and
# LLM_ETL_KUBE_NODE=1 for a node and its controllers: kubelet, kube-scheduler and kube-controller-manager.
set -euo pipefail

KUBE_VERSION="1.36.3"  # k8s.io/kubernetes v1.36.3: its go.mod says `go 1.26.0`
ETCD_VERSION="3.6.8"   # the etcd that Kubernetes 1.36.3 ships with (build/dependencies.yaml) and requires in go.mod
GO_MIN_MINOR=26        # Go 1.26 or newer

CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
PREFIX="${CACHE_DIR}/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
BIN="${PREFIX}/bin"
binaries=(kube-apiserver etcd)
[[ "${LLM_ETL_KUBE_SCHEDULER:-0}" == 1 ]] && binaries+=(kube-scheduler)
[[ "${LLM_ETL_KUBE_NODE:-0}" == 1 ]] && binaries+=(kube-controller-manager kubelet)
[[ "${LLM_ETL_KUBE_NODE:-0}" == 1 && "${LLM_ETL_KUBE_SCHEDULER:-0}" != 1 ]] && binaries+=(kube-scheduler)

cached=1
for b in "${binaries[@]}"; do [[ -x "${BIN}/${b}" ]] || cached=0; done
if ((cached)); then
    echo "${BIN}"
    exit 0
fi

# Go 1.26 on PATH; private module and build caches in a temporary folder, removed on exit (about 0.7 GB of
# modules and 2 GB of build cache)
source "$(dirname "$0")/go-env.sh" build-kube "${GO_MIN_MINOR}"

echo "build-kube: fetching k8s.io/kubernetes v${KUBE_VERSION}" >&2
kube_mod="$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
kube_info="${kube_mod%.mod}.info"
[[ -s "${kube_mod}" ]] || { echo "build-kube: could not download k8s.io/kubernetes v${KUBE_VERSION}" >&2; exit 1; }

# The kube wrapper: every `k8s.io/X => ./staging/src/k8s.io/X` of k8s.io/kubernetes's own go.mod becomes
# `k8s.io/X => k8s.io/X v0.<minor>.<patch>`; its godebug lines are copied, since only a main module's count.
mkdir -p "${work}/kube" "${work}/etcd"
{
    printf 'module llm-etl-provider/kube-build\n\ngo 1.%s.0\n\n' "${GO_MIN_MINOR}"
    grep -E '^godebug ' "${kube_mod}" || true
    printf '\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "${KUBE_VERSION}"
    awk -v v="v0.${KUBE_VERSION#1.}" '
        /^replace \($/ { inblock = 1; next }
        inblock && /^\)$/ { inblock = 0; next }
        { line = $0; sub(/^replace /, "", line); n = split(line, f, /[ \t]+/) }
        (inblock || /^replace /) && f[n - 1] == "=>" && f[n] ~ /^\.\/staging\/src\// {
            m = (f[1] == "" ? f[2] : f[1]); print "\t" m " => " m " " v
        }' "${kube_mod}"
    printf ')\n\ntool (\n'
    for cmd in kube-apiserver kube-scheduler kube-controller-manager kubelet; do printf '\tk8s.io/kubernetes/cmd/%s\n' "${cmd}"; done
    printf ')\n'
} >"${work}/kube/go.mod"
if ! grep -q 'k8s.io/api => k8s.io/api v0' "${work}/kube/go.mod"; then
    echo "build-kube: found no staging replace lines in k8s.io/kubernetes v${KUBE_VERSION}'s go.mod" >&2
    exit 1
fi

# etcd gets a wrapper of its own, so that it is built with etcd's own dependency versions, not Kubernetes's.
printf 'module llm-etl-provider/etcd-build\n\ngo 1.%s.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n\ntool go.etcd.io/etcd/server/v3\n' \
    "${GO_MIN_MINOR}" "${ETCD_VERSION}" >"${work}/etcd/go.mod"

echo "build-kube: resolving modules" >&2
for wrapper in kube etcd; do
    if ! (cd "${work}/${wrapper}" && go mod tidy >"${work}/${wrapper}-tidy.log" 2>&1); then
        cat "${work}/${wrapper}-tidy.log" >&2
        echo "build-kube: 'go mod tidy' failed for the ${wrapper} wrapper module (go.mod above)" >&2
        cat "${work}/${wrapper}/go.mod" >&2
        exit 1
    fi
done

# What `make` in the Kubernetes repository stamps into the binaries (hack/lib/version.sh), so that /version
# reports the release; the build date is the release's own (from the module's .info), for a reproducible build.
build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${kube_info}" | sed 's/\.[0-9]*Z$/Z/')"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X ${pkg}.gitVersion=v${KUBE_VERSION} -X ${pkg}.gitMajor=${KUBE_VERSION%%.*}"
    kube_ldflags+=" -X ${pkg}.gitMinor=$(cut -d. -f2 <<<"${KUBE_VERSION}") -X ${pkg}.gitTreeState=clean"
    kube_ldflags+=" -X ${pkg}.gitCommit= -X ${pkg}.buildDate=${build_date:-1970-01-01T00:00:00Z}"
done

out="${PREFIX}.tmp/bin"
rm -rf "${PREFIX}.tmp"
mkdir -p "${out}"
for b in "${binaries[@]}"; do
    [[ "${b}" == etcd ]] && continue
    echo "build-kube: building ${b} v${KUBE_VERSION} with ${jobs} jobs (this takes a while; cached afterwards)" >&2
    # the kubelet as Kubernetes releases it: static, no cgo (hack/lib/golang.sh)
    (cd "${work}/kube" && CGO_ENABLED=0 go build -p "${jobs}" -trimpath -ldflags "${kube_ldflags}" -o "${out}/${b}" \
        "k8s.io/kubernetes/cmd/${b}")
done
echo "build-kube: building etcd v${ETCD_VERSION}" >&2
(cd "${work}/etcd" && go build -p "${jobs}" -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v${ETCD_VERSION}" -o "${out}/etcd" go.etcd.io/etcd/server/v3)

cp "${GOMODCACHE}/k8s.io/kubernetes@v${KUBE_VERSION}/LICENSE" "${PREFIX}.tmp/LICENSE.kubernetes"
cp "${GOMODCACHE}/go.etcd.io/etcd/server/v3@v${ETCD_VERSION}/LICENSE" "${PREFIX}.tmp/LICENSE.etcd"
cp "${work}/kube/go.mod" "${PREFIX}.tmp/kube-build.go.mod"
cp "${work}/etcd/go.mod" "${PREFIX}.tmp/etcd-build.go.mod"
chmod 0644 "${PREFIX}.tmp"/LICENSE.* "${PREFIX}.tmp"/*.go.mod
# An earlier build of the same versions without kube-scheduler keeps its binaries.
if [[ -d "${BIN}" ]]; then
    for b in "${BIN}"/*; do [[ -e "${out}/$(basename "${b}")" ]] || cp -p "${b}" "${out}/"; done
fi
rm -rf "${PREFIX}"
mv "${PREFIX}.tmp" "${PREFIX}"
echo "${BIN}"
