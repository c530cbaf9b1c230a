#!/usr/bin/env bash
# Set everything up and run the tests: lint, the default suite (tiny random models, fault
# injection, fuzzers) and the end-to-end tests on the real SmolLM2 (import, merge and build,
# GGUF parity, distillation with a held-out check, AER). About 20 minutes on 2 cores.
# Extra arguments go to pytest: `bash scripts/test.sh -m "not slow"` runs the default suite alone
# (about 5 minutes), `bash scripts/test.sh -m slow` the SmolLM2 tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check persona tests benchmarks migrations examples scripts
if [ "$#" -eq 0 ]; then
  set -- -m "slow or not slow"
fi
.venv/bin/pytest -q "$@"
