"""A batch of prompts run as the provider's own job: Airflow's ``@task.llm_batch`` on your own GPUs.

:mod:`~llm_etl_provider.batch.job` stages a batch's prompts, runs them with the worker beside the model's
server and reads the results back, verified, through the sealed transport;
:mod:`~llm_etl_provider.batch.adapter` is the ``llm-etl`` adapter of the ``common.ai`` provider's batch
interface (the ``common-ai`` extra).
"""
