#!/usr/bin/env bash
# Set everything up and run the tests: lint, then the suite (tiny random models,
# fault injection, fuzzers). Extra arguments go to pytest: `bash scripts/test.sh -m slow`
# runs the end-to-end tests on the real SmolLM2 (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check persona tests benchmarks migrations examples
.venv/bin/pytest -q "$@"
