#!/usr/bin/env bash
# Set everything up and run the tests: lint, the fast suite (tiny random models,
# fault injection, fuzzers), then the end-to-end tests on the real SmolLM2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check persona tests benchmarks migrations examples
.venv/bin/pytest -q "$@"
.venv/bin/pytest -q -m slow "$@"
