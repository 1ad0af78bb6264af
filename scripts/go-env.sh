# Sourced by the scripts that build Go programs from their modules (build-kube.sh, build-seaweedfs.sh):
#   source scripts/go-env.sh <name for messages> <minimum Go minor version>
# It puts a Go toolchain of at least 1.<minor> on PATH (Go's own installer leaves it in /usr/local/go, which a
# non-login shell may not have on PATH), makes a temporary folder `work` that is removed on exit, and points
# Go's module and build caches into it: the user's Go caches are neither used nor changed. `jobs` is the
# build's parallelism (LLM_ETL_BUILD_JOBS, default every core).
go_builder="$1"
go_min_minor="$2"
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:${PATH}"
fi
if ! command -v go >/dev/null; then
    echo "${go_builder}: 'go' (Go 1.${go_min_minor} or newer) is required; install the Go toolchain and put it" \
        "on PATH" >&2
    exit 1
fi
go_version="$(go env GOVERSION)"  # e.g. go1.26.8
go_minor="$(sed -n 's/^go1\.\([0-9]*\).*/\1/p' <<<"${go_version}")"
if [[ -z "${go_minor}" ]] || ((go_minor < go_min_minor)); then
    echo "${go_builder}: Go 1.${go_min_minor} or newer is required, found ${go_version}" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'chmod -R u+w "${work}" 2>/dev/null; rm -rf "${work}"' EXIT
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false"
export GOMODCACHE="${work}/gomod" GOCACHE="${work}/gocache" GOPATH="${work}/gopath"
jobs="${LLM_ETL_BUILD_JOBS:-$(nproc)}"
