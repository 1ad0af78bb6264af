"""The stage's jobs, a module each, which the stage's operator calls in turn.

:class:`~llm_etl_provider.operators.stage.StageInputOperator` parses its settings and calls these; each takes
explicit arguments and knows nothing of the operator.

- :mod:`~llm_etl_provider.staging.cutting`: where the input is cut: Secret-sized gzip shards (the log
  transport), or line-aligned byte ranges (the object transport); the stage's default limits;
- :mod:`~llm_etl_provider.staging.input_copy`: the input copied once to a nameless local file, and its sha256;
- :mod:`~llm_etl_provider.staging.validation`: the input read as the worker will, before anything is staged;
- :mod:`~llm_etl_provider.staging.plan`: what both transports share: the plan's key while the plan is staged,
  the duplicate lines within a shard, the workers' memory limit;
- :mod:`~llm_etl_provider.staging.log_transport`: the log transport's shards, staged whole with the key;
- :mod:`~llm_etl_provider.staging.object_transport`: the object transport's byte ranges, staged as
  pre-signed URLs, and where their pods may connect.

Airflow's side: nothing here imports the worker (``tests/unit/test_boundaries.py``).
"""
