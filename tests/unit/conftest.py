"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.children import Children


@pytest.fixture
def children() -> Iterator[Children]:
    """Start Python children (:class:`~tests.unit.children.Children`); those left running are killed."""
    started = Children()
    yield started
    started.close()
