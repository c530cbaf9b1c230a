#!/usr/bin/env bash
# Set everything up and run the test suite (the fast suite, then the SmolLM2 end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check persona tests benchmarks migrations
.venv/bin/pytest -q "$@"
