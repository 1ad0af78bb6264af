"""The stage's jobs, a module each, which the stage's operator calls in turn.

:class:`~llm_etl_provider.operators.stage.StageInputOperator` parses its settings and calls these; each takes
explicit arguments and knows nothing of the operator.

- :mod:`~llm_etl_provider.staging.cutting`: where the input is cut: Secret-sized gzip shards (the log
  transport), or line-aligned byte ranges (the object transport); the stage's default limits.

Airflow's side: nothing here imports the worker (``tests/unit/test_boundaries.py``).
"""
