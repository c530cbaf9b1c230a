"""The merge math: pure, exact functions on tensors, one tensor at a time.

Importing this package does not import torch (the CLI's history commands must
stay fast); the names below load their submodule on first use:

- ``MergeParams`` (params), ``DenseTerm`` / ``DiffTerm`` / ``LowRankTerm`` (terms),
  ``Workspace`` (workspace): the inputs;
- ``merge_tensor`` (kernel): merge one tensor by task_arithmetic, ties,
  dare_linear or dare_ties;
- ``GlobalTopK`` / ``global_cuts`` (select): the model-wide thresholds of
  ``trim: global``; ``topk_mask_`` / ``magnitude_threshold`` (select): the exact
  radix select on its own;
- ``DiffStats`` (stats): weight-level diff statistics per layer.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MergeParams": "params",
    "keep_count": "params",
    "DenseTerm": "terms",
    "DiffTerm": "terms",
    "LowRankTerm": "terms",
    "Workspace": "workspace",
    "merge_tensor": "kernel",
    "GlobalTopK": "select",
    "GlobalCut": "select",
    "global_cuts": "select",
    "topk_mask_": "select",
    "magnitude_threshold": "select",
    "DiffStats": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
