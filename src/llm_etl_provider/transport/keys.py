"""The per-run frame key: 256 random bits, kept in a file (a mounted Secret) or an environment variable.

A key file holds the key as base64 text (raw 32-byte files are accepted too). No function here puts the key
in a message, a log line or a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llm_etl_provider.contract.invocation import KEY_ENV
from llm_etl_provider.transport.exceptions import FrameKeyError

KEY_BYTES = 32


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(data: bytes, source: str) -> bytes:
    if len(data) == KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise FrameKeyError(f"the key in {source} is neither 32 raw bytes nor base64 text") from None
    if len(key) != KEY_BYTES:
        raise FrameKeyError(f"the key in {source} is {len(key) * 8} bits; a 256-bit key is needed")
    return key


def write_key_file(path: Path, key: bytes | None = None, *, overwrite: bool = False) -> None:
    """Write a key file readable by its owner only; refuse to replace an existing one unless told to."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FrameKeyError(f"{path} exists already; remove it or choose another path") from None
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(encode_key(key or new_key()) + "\n")


def load_key(path: Path | None = None) -> bytes:
    """Read the key from ``path``, or from ``$LLM_ETL_KEY`` when no path is given."""
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FrameKeyError(f"cannot read the key file {path}: {exc.strerror}") from None
        return decode_key(data, str(path))
    value = os.environ.get(KEY_ENV)
    if not value:
        raise FrameKeyError(f"no key: give a key file or set ${KEY_ENV}")
    return decode_key(value.encode(), f"${KEY_ENV}")
