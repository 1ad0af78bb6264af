from __future__ import annotations

import base64
import stat

import pytest

from llm_etl_provider.contract.invocation import KEY_ENV
from llm_etl_provider.transport.exceptions import FrameKeyError
from llm_etl_provider.transport.keys import load_key, write_key_file


def test_key_files_are_owner_only_base64_and_not_overwritten(tmp_path):
    path = tmp_path / "run.key"
    write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert len(key) == 32
    assert base64.b64decode(path.read_text()) == key
    with pytest.raises(FrameKeyError, match="exists already"):
        write_key_file(path)
    write_key_file(path, overwrite=True)
    assert load_key(path) != key


def test_raw_key_files_and_the_environment_work(tmp_path, monkeypatch):
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    assert load_key(raw) == bytes(range(32))
    monkeypatch.setenv(KEY_ENV, base64.b64encode(bytes(32)).decode())
    assert load_key() == bytes(32)


@pytest.mark.parametrize("content", [b"short", base64.b64encode(bytes(16)), b"!!not base64!!" * 3])
def test_bad_keys_are_refused_without_showing_them(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(FrameKeyError) as info:
        load_key(path)
    assert content.decode(errors="replace") not in str(info.value)


def test_no_key_at_all_says_where_to_put_one(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(FrameKeyError, match=KEY_ENV):
        load_key()
    with pytest.raises(FrameKeyError, match="cannot read"):
        load_key(tmp_path / "absent")
