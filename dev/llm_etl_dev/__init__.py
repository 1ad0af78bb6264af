"""llm-etl-provider's developer and test tools: the ``llm-etl-dev`` command, the development cluster, an S3
server, a stand-in for a GPU engine, the demo and its report. A workspace member of the repository, installed
by ``uv sync``; never part of the provider's wheel, which holds what runs in Airflow or in the pod."""
