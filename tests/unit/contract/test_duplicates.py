from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_etl_provider.contract.duplicates import (
    DuplicatesFileError,
    decode_line_numbers,
    encode_line_numbers,
)


@given(st.sets(st.integers(1, 1 << 50), max_size=200).map(sorted))
def test_line_numbers_round_trip(lines):
    assert decode_line_numbers(encode_line_numbers(lines)) == lines


@pytest.mark.parametrize("lines", [[0], [3, 3], [5, 2]])
def test_only_increasing_positive_lines_are_encoded(lines):
    with pytest.raises(ValueError, match="positive and increasing"):
        encode_line_numbers(lines)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"3\n", "not a gzip file"),
        (gzip.compress(b"3\n0\n"), "line 2 is not a positive gap"),
        (gzip.compress(b"3\n-1\n"), "line 2 is not a positive gap"),
        (gzip.compress(b"x\n"), "line 1 is not a positive gap"),
    ],
)
def test_a_malformed_file_is_refused(data, message):
    with pytest.raises(DuplicatesFileError, match=message):
        decode_line_numbers(data)
