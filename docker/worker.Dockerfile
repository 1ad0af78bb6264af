# The pod's worker image (model-loader and base containers): llm-etl-provider without Airflow.
# `llm-etl load-model` and `llm-etl-worker` need only httpx, jsonschema and cryptography (versions from uv.lock);
# pyarrow reads a Parquet input's row groups in the object transport.
# BASE: any Python 3.11 image whose pip installs system-wide; scripts/build-images.sh builds one from Debian's
# packages where no registry is reachable.
ARG BASE=python:3.11-slim
FROM ${BASE}

COPY pyproject.toml README.md /src/
COPY src /src/src

RUN pip install --no-cache-dir --no-deps /src \
    && pip install --no-cache-dir "httpx==0.28.1" "jsonschema==4.26.0" "cryptography==50.0.2" "pyarrow==26.0.1" \
    && rm -rf /src

# The pod runs it as 65532 with a read-only root filesystem; HOME and /tmp are emptyDirs.
USER 65532:65532
ENV PYTHONUNBUFFERED=1
