"""Exit codes and dead-letter reasons: the README's tables are the contract's."""

from __future__ import annotations

import pytest

from llm_etl_provider.contract.codes import DeadLetterReason, ExitCode
from llm_etl_provider.formats.exceptions import InputError
from llm_etl_provider.worker.exceptions import (
    ConfigurationError,
    DeadLetterThresholdError,
    ModelLoadError,
    ServerUnavailableError,
    WorkerError,
)
from tests.unit.readme import table


def test_the_readme_lists_every_exit_code_with_its_meaning_and_outcome():
    expected = [
        [f"`{int(code)}`", code.meaning, "succeeds" if code == 0 else "retried" if code.retryable else ""]
        for code in ExitCode
    ]
    rows = table("| exit |")
    assert [row[:2] for row in rows] == [row[:2] for row in expected]
    for code, row in zip(ExitCode, rows, strict=True):
        assert row[2] == (
            "succeeds" if code == 0 else "retried" if code.retryable else "fails at once, no retry"
        )


def test_the_readme_lists_every_dead_letter_reason_with_its_meaning():
    assert table("| reason |") == [[f"`{reason}`", reason.meaning] for reason in DeadLetterReason]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (WorkerError, 1),
        (ConfigurationError, 2),
        (InputError, 2),
        (ServerUnavailableError, 3),
        (DeadLetterThresholdError, 4),
        (ModelLoadError, 5),
    ],
)
def test_each_run_error_exits_with_its_code(error, code):
    assert error.exit_code == code


def test_any_other_exit_code_is_an_unexpected_failure():
    assert ExitCode.describe(-9) == "an unexpected failure"  # killed by SIGKILL, say
