#!/usr/bin/env bash
# Set up (if needed), lint, type-check and run every test: unit, then integration against the real model.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Warnings are errors (pyproject.toml), but for one documented third-party deprecation inside Airflow.
exec .venv/bin/pytest "${@:-tests}"
