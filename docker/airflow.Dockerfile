# Airflow with llm-etl-provider, for docker-compose.yaml. AIRFLOW_VERSION matches the version locked in uv.lock.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION

COPY --chown=airflow:0 pyproject.toml README.md /opt/llm-etl-provider/
COPY --chown=airflow:0 src /opt/llm-etl-provider/src

# The compose file's named volumes mount here. Docker fills a new named volume with the image's folder, owner
# included; a folder the image lacks would become a root-owned volume that the airflow user (uid 50000) cannot
# write (the api-server's passwords file, the local staging).
USER root
RUN mkdir -p /opt/airflow/config /opt/airflow/staging \
    && chown airflow:0 /opt/airflow/config /opt/airflow/staging \
    && chmod 0770 /opt/airflow/config /opt/airflow/staging
USER airflow

# Pinning apache-airflow keeps pip from upgrading the image's Airflow; the amazon extra serves s3:// paths (MinIO),
# the common-ai extra @task.llm_batch (dags/llm_batch.py).
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "apache-airflow-providers-amazon[s3fs]" \
        "/opt/llm-etl-provider[amazon,common-ai,parquet]"
