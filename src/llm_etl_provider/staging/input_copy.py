"""The stage's copy of the input: read once from object storage, then read again locally as often as needed;
a Parquet input's rows as JSON lines.

The stage reads the input twice (validation, then sharding) from a copy that has no name on local disk: the
kernel frees it when the process ends, a SIGKILL included; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.formats.exceptions import UnreadableInput
from llm_etl_provider.formats.parquet import PARQUET_FORMAT, declared_parquet, parquet_to_jsonl
from llm_etl_provider.formats.records import detect_format

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


@dataclass(frozen=True)
class InputCopy:
    """The input's local copy.

    :param path: a path that opens the copy, each time with an offset of its own (valid inside the block)
    :param sha256: the digest of the input as it is (compressed or not)
    """

    path: Path
    sha256: str


@contextlib.contextmanager
def input_copy(source: ObjectStoragePath, *, max_bytes: int, name: str) -> Iterator[InputCopy]:
    """Copy the input ``source`` to a nameless local file, refusing one over ``max_bytes``; the copy lives as
    long as the block. ``name`` is how messages name the input (its path as given)."""
    with tempfile.TemporaryFile(prefix="llm-etl-stage-") as copy:
        sha256 = _copy(source, copy, max_bytes, name)
        yield InputCopy(_reopenable(copy), sha256)


def _copy(source: ObjectStoragePath, copy: BinaryIO, max_bytes: int, name: str) -> str:
    """Copy the input as it is (compressed or not), refusing one over ``max_bytes``; return its sha256."""
    copied = 0
    digest = hashlib.sha256()
    try:
        with source.open("rb") as reader:  # type: ignore[no-untyped-call]
            while chunk := reader.read(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise StagingError(f"{name}: the input is over max_input_bytes ({max_bytes})")
                copy.write(chunk)
                digest.update(chunk)
    except (OSError, ValueError) as exc:
        raise StagingError(f"cannot read the input {name}: {exc}") from None
    copy.flush()
    return digest.hexdigest()


def _reopenable(copy: BinaryIO) -> Path:
    """A path that opens the nameless file ``copy`` again, with an offset of its own (Linux's /proc)."""
    path = Path(f"/proc/self/fd/{copy.fileno()}")
    if not path.exists():
        raise StagingError("the stage needs Linux's /proc to read its nameless copy of the input")
    return path


@contextlib.contextmanager
def as_json_lines(copy: InputCopy, name: str) -> Iterator[Path]:
    """The Parquet input ``copy`` as JSON lines, row ``n`` on line ``n``, in a local file that lives as long
    as the block (:func:`~llm_etl_provider.formats.parquet.parquet_to_jsonl`); ``name`` is how messages name
    the input."""
    with tempfile.TemporaryDirectory(prefix="llm-etl-parquet-") as scratch:
        lines = Path(scratch) / "rows.jsonl"
        try:
            parquet_to_jsonl(copy.path, lines)
        except UnreadableInput as exc:
            raise StagingError(f"{name}: {exc}") from None
        yield lines


@dataclass(frozen=True)
class LocalInput:
    """An input read locally as the stage reads it.

    :param path: its records, as the worker reads them (a Parquet input's as JSON lines)
    :param format: the format of ``path``: ``jsonl`` or ``csv``
    :param sha256: the digest of the input as it is
    :param parquet: a Parquet input's copy, as it is (None for another format)
    """

    path: Path
    format: str
    sha256: str
    parquet: Path | None = None

    @property
    def declared(self) -> str:
        """Its own format (``parquet`` for a Parquet input), for the plan."""
        return PARQUET_FORMAT if self.parquet is not None else self.format


@contextlib.contextmanager
def local_input(name: str, declared: str, *, max_bytes: int) -> Iterator[LocalInput]:
    """The input ``name`` (any ObjectStoragePath URI) copied here, a Parquet one as JSON lines; it lives as
    long as the block. Raise InputError where its format cannot be told."""
    from airflow.sdk import ObjectStoragePath

    parquet = declared_parquet(name, declared)
    fmt = "jsonl" if parquet else detect_format(Path(name), declared)
    with (
        input_copy(ObjectStoragePath(name), max_bytes=max_bytes, name=name) as copy,
        as_json_lines(copy, name) if parquet else contextlib.nullcontext(copy.path) as path,
    ):
        yield LocalInput(path, fmt, copy.sha256, parquet=copy.path if parquet else None)
