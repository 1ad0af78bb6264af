#!/usr/bin/env bash
# Build the pod's images: the worker (docker/worker.Dockerfile: `model-loader` and `base`) and llama.cpp's server
# (docker/llama-server.Dockerfile, the `llamacpp` backend on CPU, with the llama-server this project builds).
# With docker, podman or buildah, whichever is on PATH (LLM_ETL_BUILDER to choose).
#
#   scripts/build-images.sh [--tag TAG] [--registry HOST[:PORT]/PATH] [--local-base] [--host-certs]
#                           [--oci-dir DIR] [--pause]
#
# --registry    name the images HOST/PATH/worker:TAG and llama-server:TAG and push them there (default: only
#               build them, as localhost/llm-etl/...). Point the pod at them with the operator's `worker_image`
#               and `server_image` (by digest, as printed), or the example DAG's [llm_etl] worker_image and
#               server_image (AIRFLOW__LLM_ETL__WORKER_IMAGE / AIRFLOW__LLM_ETL__SERVER_IMAGE).
# --local-base  where no registry is reachable: build the base images from Debian's packages (mmdebstrap) instead
#               of pulling python:3.11-slim and debian:bookworm-slim.
# --host-certs  lend the builds' RUN steps this machine's CA certificates (behind a TLS-intercepting proxy);
#               they are not kept in the images.
# --oci-dir     also write each image as an OCI archive DIR/<name>.tar (what `ctr images import` loads).
# --pause       also build the pod sandbox's `pause` image (a node without a registry needs one).
#
# Prints one line per image: `<name> <reference> <digest>`.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
registry="" local_base=0 host_certs=0 oci_dir="" pause=0
while (($#)); do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --registry) registry="$2"; shift 2 ;;
        --local-base) local_base=1; shift ;;
        --host-certs) host_certs=1; shift ;;
        --oci-dir) oci_dir="$2"; shift 2 ;;
        --pause) pause=1; shift ;;
        *) echo "build-images: unknown argument $1" >&2; exit 2 ;;
    esac
done

builder="${LLM_ETL_BUILDER:-}"
if [[ -z "${builder}" ]]; then
    for candidate in docker podman buildah; do
        command -v "${candidate}" >/dev/null || continue
        # a docker client without a daemon it can reach builds nothing
        [[ "${candidate}" == docker ]] && ! docker info >/dev/null 2>&1 && continue
        builder="${candidate}"
        break
    done
fi
[[ -n "${builder}" ]] || { echo "build-images: needs docker, podman or buildah" >&2; exit 1; }
# buildah's and podman's storage: vfs where overlay mounts are refused (STORAGE_DRIVER chooses)
storage=()
[[ "${builder}" != docker && -n "${STORAGE_DRIVER:-}" ]] && storage=(--storage-driver "${STORAGE_DRIVER}")

CACHE_DIR="${LLM_ETL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-etl-provider}"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
prefix="${registry:-localhost/llm-etl}"

run_builder() { "${builder}" "${storage[@]}" "$@"; }

build() {  # build <dockerfile> <context> <reference> [build args...]
    local dockerfile="$1" context="$2" reference="$3"
    shift 3
    local args=(build -q -f "${dockerfile}" -t "${reference}")
    [[ "${builder}" == docker ]] || args+=(--network host)
    ((host_certs)) && [[ "${builder}" != docker ]] && args+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
    for arg in "$@"; do args+=(--build-arg "${arg}"); done
    run_builder "${args[@]}" "${context}" >&2
}

# An image from a root filesystem tarball (mmdebstrap's, or the pause binary's), with an entrypoint and user.
import_rootfs() {  # import_rootfs <tar> <reference> [<entrypoint> <user>]
    local tarball="$1" reference="$2" entrypoint="${3:-}" user="${4:-}"
    if [[ "${builder}" == buildah ]]; then
        local container
        container="$(run_builder from scratch)"
        run_builder add "${container}" "${tarball}" / >/dev/null
        [[ -n "${entrypoint}" ]] && run_builder config --entrypoint "[\"${entrypoint}\"]" --user "${user}" "${container}"
        run_builder commit -q "${container}" "${reference}" >/dev/null
        run_builder rm "${container}" >/dev/null
    else
        local changes=()
        [[ -n "${entrypoint}" ]] && changes=(--change "ENTRYPOINT [\"${entrypoint}\"]" --change "USER ${user}")
        run_builder import "${changes[@]}" "${tarball}" "${reference}" >/dev/null
    fi
}

digest_of() {  # the image's manifest digest, as a pod names it: <reference>@<digest>
    case "${builder}" in
        buildah) run_builder inspect --type image --format '{{.FromImageDigest}}' "$1" ;;
        podman) run_builder image inspect --format '{{.Digest}}' "$1" ;;
        docker) docker image inspect --format '{{index .RepoDigests 0}}' "$1" 2>/dev/null | sed 's/.*@//' || true ;;
    esac
}

python_base="python:3.11-slim" debian_base="debian:bookworm-slim"
if ((local_base)); then
    command -v mmdebstrap >/dev/null || { echo "build-images: --local-base needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
    # cached: Debian's packages change rarely, and a base takes a minute to make
    bases="${CACHE_DIR}/image-bases"
    mkdir -p "${bases}"
    if [[ ! -s "${bases}/python.tar" ]]; then
        echo "build-images: making a Python 3.11 base from Debian bookworm's packages" >&2
        mmdebstrap --quiet --variant=minbase --include=python3,python3-pip,ca-certificates \
            --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
            bookworm "${bases}/python.tar.tmp" http://deb.debian.org/debian >&2
        mv "${bases}/python.tar.tmp" "${bases}/python.tar"
    fi
    if [[ ! -s "${bases}/debian.tar" ]]; then
        echo "build-images: making a Debian bookworm base" >&2
        mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "${bases}/debian.tar.tmp" \
            http://deb.debian.org/debian >&2
        mv "${bases}/debian.tar.tmp" "${bases}/debian.tar"
    fi
    python_base="localhost/llm-etl/python:3.11-bookworm" debian_base="localhost/llm-etl/debian:bookworm"
    import_rootfs "${bases}/python.tar" "${python_base}"
    import_rootfs "${bases}/debian.tar" "${debian_base}"
fi

references=()
worker="${prefix}/worker:${tag}"
echo "build-images: building ${worker} with ${builder}" >&2
build docker/worker.Dockerfile . "${worker}" "BASE=${python_base}"
references+=("worker=${worker}")

server="${prefix}/llama-server:${tag}"
llama_server="$(bash scripts/build-llama-server.sh)"
mkdir -p "${work}/llama-server"
cp "${llama_server}" "${work}/llama-server/llama-server"
cp "$(dirname "${llama_server}")/../LICENSE" "${work}/llama-server/LICENSE"
echo "build-images: building ${server}" >&2
build docker/llama-server.Dockerfile "${work}/llama-server" "${server}" "BASE=${debian_base}"
references+=("llama-server=${server}")

if ((pause)); then
    command -v cc >/dev/null || { echo "build-images: --pause needs a C compiler" >&2; exit 1; }
    mkdir -p "${work}/pause/rootfs"
    cat >"${work}/pause/pause.c" <<'C'
/* The pod sandbox's process: waits for a signal, reaps the children it inherits. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int s) { (void)s; exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, stop); signal(SIGTERM, stop); signal(SIGCHLD, reap);
    for (;;) pause();
}
C
    cc -Os -static -o "${work}/pause/rootfs/pause" "${work}/pause/pause.c"
    tar -C "${work}/pause/rootfs" -cf "${work}/pause/rootfs.tar" pause
    sandbox="${prefix}/pause:3.10"
    import_rootfs "${work}/pause/rootfs.tar" "${sandbox}" /pause 65535:65535
    references+=("pause=${sandbox}")
fi

for entry in "${references[@]}"; do
    name="${entry%%=*}" reference="${entry#*=}"
    digest=""
    if [[ -n "${registry}" ]]; then
        if [[ "${builder}" == docker ]]; then
            docker push -q "${reference}" >&2
        else  # the digest of the manifest as the registry holds it: what a pod names
            run_builder push -q --digestfile "${work}/digest" "${reference}" >&2
            digest="$(cat "${work}/digest")"
        fi
    fi
    if [[ -n "${oci_dir}" ]]; then
        mkdir -p "${oci_dir}"
        rm -f "${oci_dir}/${name}.tar"
        if [[ "${builder}" == docker ]]; then
            docker save -o "${oci_dir}/${name}.tar" "${reference}"
        else
            run_builder push -q --digestfile "${work}/digest" "${reference}" \
                "oci-archive:${oci_dir}/${name}.tar:${reference}" >&2
            [[ -n "${digest}" ]] || digest="$(cat "${work}/digest")"
        fi
    fi
    echo "${name} ${reference} ${digest:-$(digest_of "${reference}")}"
done
