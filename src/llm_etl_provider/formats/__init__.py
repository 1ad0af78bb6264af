"""The input's formats, read alike by the stage and the worker: neither side owns them.

- :mod:`~llm_etl_provider.formats.tokenizer`: where the input's JSONL lines and CSV rows begin and end;
- :mod:`~llm_etl_provider.formats.records`: the records made of them, and the stage's caps on an input;
- :mod:`~llm_etl_provider.formats.strict_json`: JSON as the worker takes it from its input and its model;
- :mod:`~llm_etl_provider.formats.id_index`: the first input line of every record id;
- :mod:`~llm_etl_provider.formats.exceptions`: an input that cannot be read as a whole.

They import only :mod:`llm_etl_provider.contract` and each other (no Airflow, nothing of the worker or the
operators): the worker's image imports them.
"""
