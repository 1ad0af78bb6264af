# The LLM server sidecar for the llamacpp backend on CPU: llama.cpp's `llama-server` as scripts/build-llama-server.sh
# builds it (portable x86-64 with AVX2, no CUDA), with the libraries it links and `curl` for the pod's probes.
# Build context: a folder holding `llama-server` and its LICENSE (scripts/build-images.sh makes it).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY llama-server /app/llama-server
COPY LICENSE /app/LICENSE.llama.cpp

# The pod runs it as 65532 with a read-only root filesystem, the model mounted read-only under /models.
USER 65532:65532
ENTRYPOINT ["/app/llama-server"]
