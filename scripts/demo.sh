#!/usr/bin/env bash
# Set up (if needed), then enrich the 600 drug reviews with the real SmolLM2 model served by llama-server, and
# write results, dead letters, summary and a readable report to out/demo. Arguments go to `llm-etl-dev demo`,
# e.g. `scripts/demo.sh --limit 60` for a quick look (all 600 records take ~5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
exec .venv/bin/llm-etl-dev demo "$@"
