"""APOLLO (Zhu et al. 2024, ``apollo-torch``): AdamW-like updates with SGD-like optimizer memory.

APOLLO keeps Adam's moments only in a random low-rank projection of each
matrix's gradient and uses them to scale the raw gradient (per tensor in
APOLLO-Mini, rank 1). persona offers it as ``persona train --optimizer
apollo``, the optimiser the research note behind persona names as the
"compiler" of behaviours.

Settings: every 2-D trainable tensor (the LoRA factors) is a projected
parameter with APOLLO-Mini's rank 1 and tensor-wise scaling; ``scale`` is the
ratio of the matrix's smaller dimension to that rank, the rule behind the
paper's choices (4096 / 128 for LLaMA-8B, 128 for rank 1 on wide models): for
rank-16 LoRA factors it is 16. The projection is regenerated every 200 steps
from a seed per parameter, so a run shorter than that resumes exactly.

The package is optional (``pip install 'persona[apollo]'``; it needs
bitsandbytes at import time) and licensed CC-BY-NC by its authors: check that
the licence suits your use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from persona.errors import InvalidInput

RANK = 1
UPDATE_PROJ_GAP = 200


def require_apollo() -> Any:
    """The APOLLO optimiser class, or a one-line error saying how to install it."""
    try:
        from apollo_torch import APOLLOAdamW
    except ImportError as exc:
        raise InvalidInput(f"--optimizer apollo needs the apollo-torch package ({exc})",
                           "pip install 'persona[apollo]' (apollo-torch and bitsandbytes), or use --optimizer adamw"
                           ) from exc
    return APOLLOAdamW


def apollo_optimizer(named: Sequence[tuple[str, Any]], lr: float, weight_decay: float) -> Any:
    APOLLOAdamW = require_apollo()  # noqa: N806 - the library's class name
    matrices = [p for _, p in named if p.dim() == 2]
    others = [p for _, p in named if p.dim() != 2]
    groups: list[dict[str, Any]] = []
    if others:
        groups.append({"params": others})
    by_scale: dict[int, list[Any]] = {}
    for p in matrices:
        by_scale.setdefault(max(1, min(p.shape) // RANK), []).append(p)
    for scale, params in sorted(by_scale.items()):
        groups.append({"params": params, "rank": RANK, "proj": "random", "scale_type": "tensor",
                       "scale": scale, "update_proj_gap": UPDATE_PROJ_GAP, "proj_type": "std"})
    return APOLLOAdamW(groups, lr=lr, weight_decay=weight_decay)


def strip_projectors(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an optimizer state dict without APOLLO's projector objects (rebuilt from their seeds),
    so it saves as plain tensors; the live optimizer keeps its own."""
    inner = state.get("state", {})
    stripped = {key: ({k: v for k, v in value.items() if k != "projector"} if isinstance(value, dict) else value)
                for key, value in inner.items()}
    return {**state, "state": stripped}
