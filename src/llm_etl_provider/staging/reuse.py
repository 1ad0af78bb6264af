"""The stage's half of an incremental run: which input records have a result in an earlier output.

The earlier output (a run's folder: ``<output>/<dag>/<group>/<run>``, JSONL or Parquet) is read once, its
results indexed by their record's digest (``meta.record_sha256``) in a scratch SQLite file, so that memory
holds neither output nor input; then each input record, read as the worker will read it, is looked up by its
own digest. What matches is handed to each shard's staging (:meth:`ReusedResults.between`); the worker
publishes an earlier result only where its content digest is the one it computes now
(:mod:`~llm_etl_provider.contract.reuse`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_etl_provider.contract.answers import RESULT_FIELDS
from llm_etl_provider.contract.reuse import CONTENT_SHA256, RECORD_SHA256, record_digest
from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.formats.records import InputLimits, RecordReader
from llm_etl_provider.transport.extract import as_upath, published_rows

BATCH = 1000  # rows per SQLite transaction


class ReusedResults:
    """The earlier results found for this input's records, by input line.

    :param database: the scratch SQLite database holding them
    :param earlier: how many earlier results the output held
    :param found: how many input records have one
    """

    def __init__(self, database: sqlite3.Connection, earlier: int, found: int) -> None:
        self.database = database
        self.earlier = earlier
        self.found = found

    def between(self, first: int, end: int | None) -> list[tuple[int, str]]:
        """``(input line, earlier result as JSON)`` of the lines from ``first`` up to ``end`` (excluded;
        None: to the last)."""
        query = "SELECT line, result FROM reused WHERE line >= ? AND line < ? ORDER BY line"
        rows = self.database.execute(query, (first, end if end is not None else 2**62)).fetchall()
        return [(int(line), str(result)) for line, result in rows]


@contextlib.contextmanager
def reused_results(
    previous_output: str,
    local: Path,
    *,
    input_format: str,
    id_field: str,
    max_record_bytes: int,
    limits: InputLimits,
) -> Iterator[ReusedResults]:
    """Index the results under ``previous_output`` and find those of the records of ``local`` (the input's
    local copy); the index lives as long as the block."""
    with tempfile.TemporaryDirectory(prefix="llm-etl-reuse-") as scratch:
        database = sqlite3.connect(Path(scratch) / "reuse.db")
        try:
            database.execute("CREATE TABLE earlier (record TEXT PRIMARY KEY, result TEXT NOT NULL)")
            database.execute("CREATE TABLE reused (line INTEGER PRIMARY KEY, result TEXT NOT NULL)")
            earlier = _index_earlier(database, previous_output)
            found = _find(database, local, input_format, id_field, max_record_bytes, limits)
            yield ReusedResults(database, earlier, found)
        finally:
            database.close()


def _index_earlier(database: sqlite3.Connection, previous_output: str) -> int:
    """Put each earlier result that names its record's and content's digests into ``earlier``."""
    root = as_upath(previous_output)
    try:
        shards = sorted(folder for folder in root.glob("shard-*") if folder.is_dir())
    except OSError as exc:
        raise StagingError(f"cannot read the earlier output {previous_output}: {exc}") from None
    if not shards:
        raise StagingError(
            f"no shard folder under the earlier output {previous_output}: name an earlier run's folder, "
            "<output>/<dag>/<group>/<run>"
        )

    def earlier() -> Iterator[tuple[str, str]]:
        for folder in shards:
            for row in published_rows(folder):
                if row is None:
                    continue
                meta = row.get("meta")
                if not isinstance(meta, dict) or not meta.get(RECORD_SHA256) or not meta.get(CONTENT_SHA256):
                    continue  # a result of a version that did not write its digests
                kept = {name: row.get(name) for name in RESULT_FIELDS}  # a result's own, not carried ones
                yield str(meta[RECORD_SHA256]), json.dumps(kept, ensure_ascii=False)

    return _insert(database, "earlier", earlier())


def _find(
    database: sqlite3.Connection,
    local: Path,
    input_format: str,
    id_field: str,
    max_record_bytes: int,
    limits: InputLimits,
) -> int:
    """Put the earlier result of each record of ``local`` that has one into ``reused``, by its line."""
    reader = RecordReader(
        local, input_format=input_format, id_field=id_field, max_record_bytes=max_record_bytes, limits=limits
    )
    lookup = "SELECT result FROM earlier WHERE record = ?"

    def found() -> Iterator[tuple[int, str]]:
        for record in reader:
            if record.fields is not None:
                row = database.execute(lookup, (record_digest(record.fields),)).fetchone()
                if row is not None:
                    yield record.line, row[0]

    return _insert(database, "reused", found())


def _insert(database: sqlite3.Connection, table: str, rows: Iterator[tuple[Any, str]]) -> int:
    """Insert ``rows`` into ``table``, :data:`BATCH` at a time; return how many."""
    count = 0
    while batch := list(itertools.islice(rows, BATCH)):
        database.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", batch)  # noqa: S608 - our names
        count += len(batch)
    database.commit()
    return count
