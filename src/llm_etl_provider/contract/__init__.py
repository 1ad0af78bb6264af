"""The pod contract, written once: what the Airflow side, the pod and the worker must agree on.

- :mod:`~llm_etl_provider.contract.invocation`: the worker's invocation, one typed object from which both the
  pod's argv and the worker's parser are derived;
- :mod:`~llm_etl_provider.contract.layout`: the pod's names, mount paths, file names, Secret keys and labels,
  and the names of what a run creates;
- :mod:`~llm_etl_provider.contract.codes`: the worker's exit codes and the dead-letter reasons;
- :mod:`~llm_etl_provider.contract.shard`: the shard descriptor the stage hands to each shard's tasks, and the
  run-id rule;
- :mod:`~llm_etl_provider.contract.pod_commands`: the pod's other command lines (the model loader, the
  heartbeat probe) and their parsers.

No Airflow and no Kubernetes client here: the worker's image imports this package.
"""
