#!/usr/bin/env bash
# The GPU benchmark, run ON the device machine from the repository root (the working tree and .gpu/ travel):
#
#   benchmarks/gpu/run_gpu.sh build   # llama-server with CUDA, from .gpu/llama.cpp, into $BUILD_DIR
#   benchmarks/gpu/run_gpu.sh bench   # random Llama model, llama-server on the GPU, bench_gpu.py
#   benchmarks/gpu/run_gpu.sh all     # both; the bench only if enough of this call's time is left
#
# The build folder persists between calls on the same (warm) machine: a `build` cut short resumes, and `bench`
# reuses the binary and the model. Every step prints a timestamp; logs and results go to $OUT.
#
# Settings (environment): BUILD_DIR (/tmp/llama-build), JOBS (16), NO_MMQ (1: leave out the quantized MMQ
# kernels, see prepare.sh), CALL_BUDGET_S (585: this call's wall time, so that a phase that cannot finish is
# not started), SHAPE (1b), VOCAB_PAD (0: SmolLM2's 49152 tokens; 128256: Llama 3's), PARALLEL (128 slots),
# CTX_PER_SLOT (1024), SWEEP (1,8,32,64,128), MAX_RECORDS (512), SERVER_ARGS (more llama-server flags),
# PYTHON (/opt/torch/.venv/bin/python3).
set -uo pipefail

PHASE="${1:-all}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
GPU="${REPO}/.gpu"
BUILD_DIR="${BUILD_DIR:-/tmp/llama-build}"
JOBS="${JOBS:-16}"
NO_MMQ="${NO_MMQ:-1}"
CALL_BUDGET_S="${CALL_BUDGET_S:-585}"
SHAPE="${SHAPE:-1b}"
PARALLEL="${PARALLEL:-128}"
CTX_PER_SLOT="${CTX_PER_SLOT:-1024}"
SWEEP="${SWEEP:-1,8,32,64,128}"
MAX_RECORDS="${MAX_RECORDS:-512}"
SERVER_ARGS="${SERVER_ARGS:-}"
OUT="${OUT:-/tmp/bench-gpu-out}"
VOCAB_PAD="${VOCAB_PAD:-0}"
MODEL="/tmp/random-llama-${SHAPE}-v${VOCAB_PAD}.gguf"
SERVER="${BUILD_DIR}/bin/llama-server"
T0=$(date +%s)
mkdir -p "${OUT}"
export PYTHONUNBUFFERED=1

step() { echo "[$(date +%H:%M:%S) +$(($(date +%s) - T0))s] $*"; }
left() { echo $((CALL_BUDGET_S - ($(date +%s) - T0))); }

PYTHON="${PYTHON:-}"
if [[ -z "${PYTHON}" ]]; then
    for candidate in /opt/torch/.venv/bin/python3 python3; do
        if command -v "${candidate}" >/dev/null; then PYTHON="${candidate}"; break; fi
    done
fi
export PATH="${PATH}:/usr/local/cuda/bin:$(dirname "${PYTHON}")"

find_nvcc() {
    command -v nvcc && return
    local d
    for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/cuda/bin; do
        [[ -x "${d}/nvcc" ]] && { echo "${d}/nvcc"; return; }
    done
    find /usr/local /usr/lib /opt -maxdepth 10 -name nvcc -type f -perm -u+x 2>/dev/null | head -1
}

build() {
    step "build: machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    local nvcc
    nvcc="$(find_nvcc)"
    [[ -n "${nvcc}" ]] || { step "build: no nvcc found"; return 1; }
    local cuda_root
    cuda_root="$(cd "$(dirname "${nvcc}")/.." && pwd)"
    echo "nvcc: ${nvcc}: $("${nvcc}" --version | tail -1)"
    echo "cmake: $(command -v cmake) $(cmake --version | head -1)"
    echo "ninja: $(command -v ninja) $(ninja --version 2>/dev/null)"
    echo "c++: $(c++ --version | head -1)"
    ls "${cuda_root}"/lib64/libcublas.so* "${cuda_root}"/lib64/libcudart.so* 2>/dev/null | head -4
    if [[ -x "${SERVER}" && -f "${BUILD_DIR}/.built" ]]; then
        step "build: ${SERVER} is already built"
        return 0
    fi

    local generator=(-G Ninja)
    command -v ninja >/dev/null || generator=()
    # -allow-unsupported-compiler: a host g++ newer than this nvcc knows is a warning, not a failed configure
    local cuda_flags="-allow-unsupported-compiler"
    [[ "${NO_MMQ}" == 1 ]] && cuda_flags="${cuda_flags} -DLLM_ETL_NO_MMQ"
    if [[ ! -f "${BUILD_DIR}/CMakeCache.txt" ]]; then
        step "build: configure (CUDA root ${cuda_root}, NO_MMQ=${NO_MMQ})"
        cmake -S "${GPU}/llama.cpp" -B "${BUILD_DIR}" "${generator[@]}" \
            -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="${nvcc}" -DCUDAToolkit_ROOT="${cuda_root}" \
            -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS="${cuda_flags}" \
            -DGGML_CUDA_FA_QUANTS=f16-f16 -DGGML_CUDA_COMPRESSION_MODE=none -DGGML_CUDA_NCCL=OFF \
            -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF \
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >"${OUT}/configure.log" 2>&1
        local rc=$?
        grep -E "CUDA|FlashAttention|Error|error" "${OUT}/configure.log" | head -20
        if [[ ${rc} -ne 0 ]]; then
            tail -40 "${OUT}/configure.log"
            step "build: configure failed (${rc})"
            rm -f "${BUILD_DIR}/CMakeCache.txt"
            return 1
        fi
        step "build: configured"
    fi

    # leave time for the output to come back: stop the compiler, keep what is done (a rerun resumes)
    local limit=$(($(left) - ${BUILD_RESERVE_S:-10}))
    if [[ ${limit} -lt 30 ]]; then
        step "build: no time left in this call: run 'build' again at once"
        return 2
    fi
    step "build: llama-server with ${JOBS} jobs, at most ${limit} s"
    timeout "${limit}" cmake --build "${BUILD_DIR}" --target llama-server -j "${JOBS}" >"${OUT}/build.log" 2>&1 &
    local pid=$!
    while kill -0 "${pid}" 2>/dev/null; do
        sleep 30
        kill -0 "${pid}" 2>/dev/null && step "build: $(grep -E '^\[[0-9]+/[0-9]+\]' "${OUT}/build.log" | tail -1 | cut -c1-140)"
    done
    wait "${pid}"
    local rc=$?
    if [[ -f "${BUILD_DIR}/.ninja_log" ]]; then
        # the slowest steps (start, end, mtime, output): where the build's time goes
        awk 'NR > 1 { printf "%7.1f s  %s\n", ($2 - $1) / 1000, $4 }' "${BUILD_DIR}/.ninja_log" | sort -rn | head -12
        awk 'NR > 1 { s += ($2 - $1) / 1000 } END { printf "compile time summed over steps: %.0f s\n", s }' \
            "${BUILD_DIR}/.ninja_log"
    fi
    if [[ ${rc} -eq 124 ]]; then
        step "build: stopped at the time limit; run 'build' (or 'all') again at once on this warm machine to resume"
        return 2
    fi
    if [[ ${rc} -ne 0 ]]; then
        grep -E "error|FAILED" "${OUT}/build.log" | head -20
        tail -20 "${OUT}/build.log"
        step "build: failed (${rc})"
        return 1
    fi
    touch "${BUILD_DIR}/.built"
    step "build: done"
    "${SERVER}" --version 2>&1 | tail -3
    ldd "${SERVER}" | grep -Ei "cuda|cublas" || true
}

bench() {
    [[ -x "${SERVER}" ]] || { step "bench: ${SERVER} is missing: run 'build' first"; return 1; }
    local nvcc
    nvcc="$(find_nvcc)"
    # in case the binary's run path does not name the toolkit's libraries (cuBLAS, the CUDA runtime)
    [[ -n "${nvcc}" ]] && export LD_LIBRARY_PATH="$(dirname "${nvcc}")/../lib64:${LD_LIBRARY_PATH:-}"
    step "bench: wheels"
    "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${GPU}"/whl/*.whl || return 1
    export PYTHONPATH="/tmp/site:${REPO}/src:${REPO}"
    "${PYTHON}" -c "import numpy, httpx, jsonschema, cryptography, isal, pybase64, llm_etl_provider.worker.cli" \
        || return 1
    if [[ ! -f "${MODEL}" ]]; then
        step "bench: random ${SHAPE} model"
        "${PYTHON}" "${REPO}/benchmarks/gpu/make_random_gguf.py" --gguf-py "${GPU}/gguf-py" \
            --tokenizer "${GPU}/tokenizer.gguf" --shape "${SHAPE}" --vocab-pad "${VOCAB_PAD}" --out "${MODEL}.part" \
            || return 1
        mv "${MODEL}.part" "${MODEL}"
    fi
    local deadline=$(($(left) - 20))
    if [[ ${deadline} -lt 90 ]]; then
        step "bench: only $(left) s left in this call: run 'bench' in the next call"
        return 2
    fi
    step "bench: bench_gpu.py, measurements started only when they fit ${deadline} s"
    local server_args=()
    for arg in ${SERVER_ARGS}; do server_args+=(--server-arg="${arg}"); done
    "${PYTHON}" "${REPO}/benchmarks/gpu/bench_gpu.py" --server "${SERVER}" --model "${MODEL}" \
        --parallel "${PARALLEL}" --ctx-per-slot "${CTX_PER_SLOT}" --sweep "${SWEEP}" --max-records "${MAX_RECORDS}" \
        --input "${GPU}/reviews.jsonl" --deadline-s "${deadline}" --out-dir "${OUT}" \
        --json "${OUT}/bench-gpu.json" "${server_args[@]}"
    local rc=$?
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
        --format=csv,noheader || true
    step "bench: done (${rc})"
    return ${rc}
}

case "${PHASE}" in
    build) build ;;
    bench) bench ;;
    all)
        build
        rc=$?
        if [[ ${rc} -ne 0 ]]; then exit ${rc}; fi
        bench
        ;;
    *) echo "usage: $0 build|bench|all" >&2; exit 64 ;;
esac
