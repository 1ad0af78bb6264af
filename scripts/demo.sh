#!/usr/bin/env bash
# Set up (if needed), then enrich the 600 drug reviews with the real SmolLM2 model served by llama-server, and
# write results, dead letters, summary and a readable report to out/demo (or the folder given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/llm-etl demo --output "${1:-out/demo}"
