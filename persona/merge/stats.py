"""Weight-level diff statistics between two deltas, streamed one tensor at a time.

For ``persona diff``: how much each layer changed and whether two vectors pull
the same way. Feed ``DiffStats.observe(name, a, b)`` per tensor, where ``a`` and
``b`` are two deltas of that tensor (two vectors' deltas, or two builds' weights
minus the base; ``None`` stands for an all-zero delta, e.g. a tensor a LoRA
vector does not touch). Per layer (``model.layers.3.`` -> 3, non-layer tensors
-> ``None``) and in total it reports:

- ``l2_change``: ||b - a||, the size of the change from a to b;
- ``norm_a`` / ``norm_b``;
- ``cosine``: <a, b> / (||a|| ||b||) (``None`` when either is all zero);
- ``sign_conflict_rate``: the fraction of entries where both are nonzero and
  their signs differ (the interference TIES' sign election resolves), and
  ``overlap_conflict_rate``, the same over the entries where both are nonzero.

Sums are accumulated in float64 over float32 chunks, so the numbers do not
depend on the chunk size beyond float64 rounding.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

from persona.errors import Incompatible
from persona.merge.workspace import Workspace

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def layer_of(name: str) -> int | None:
    """The transformer block index in a tensor name (``model.layers.3.mlp...`` -> 3)."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


@dataclass
class DiffGroup:
    """Running sums for one group of tensors (a layer, or everything)."""

    tensors: int = 0
    numel: int = 0
    sumsq_a: float = 0.0
    sumsq_b: float = 0.0
    dot: float = 0.0
    sumsq_change: float = 0.0
    both_nonzero: int = 0
    conflicts: int = 0

    def merge(self, other: DiffGroup) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    @property
    def l2_change(self) -> float:
        return math.sqrt(self.sumsq_change)

    @property
    def norm_a(self) -> float:
        return math.sqrt(self.sumsq_a)

    @property
    def norm_b(self) -> float:
        return math.sqrt(self.sumsq_b)

    @property
    def cosine(self) -> float | None:
        denom = math.sqrt(self.sumsq_a) * math.sqrt(self.sumsq_b)
        return self.dot / denom if denom > 0 else None

    @property
    def sign_conflict_rate(self) -> float:
        return self.conflicts / self.numel if self.numel else 0.0

    @property
    def overlap_conflict_rate(self) -> float:
        return self.conflicts / self.both_nonzero if self.both_nonzero else 0.0

    def summary(self) -> dict[str, float | int | None]:
        return {
            "tensors": self.tensors,
            "numel": self.numel,
            "l2_change": self.l2_change,
            "norm_a": self.norm_a,
            "norm_b": self.norm_b,
            "cosine": self.cosine,
            "sign_conflict_rate": self.sign_conflict_rate,
            "overlap_conflict_rate": self.overlap_conflict_rate,
        }


def diff_tensor(
    a: torch.Tensor | None, b: torch.Tensor | None, ws: Workspace, name: str = "tensor"
) -> DiffGroup:
    """The ``DiffGroup`` of one tensor pair (``None`` = all zeros)."""
    if a is None and b is None:
        raise ValueError("diff_tensor needs at least one tensor")
    if a is not None and b is not None and a.shape != b.shape:
        raise Incompatible(
            f"tensor {name!r} has shape {tuple(a.shape)} on one side and {tuple(b.shape)} on the other",
            "compare vectors or builds of the same base",
        )
    ref = a if a is not None else b
    n = ref.numel()
    g = DiffGroup(tensors=1, numel=n)
    fa = a.detach().reshape(-1) if a is not None else None
    fb = b.detach().reshape(-1) if b is not None else None
    step = ws.chunk_elems
    for i in range(0, n, step):
        m = min(step, n - i)
        xa = ws.buffer("st_a", torch.float64, m)
        xb = ws.buffer("st_b", torch.float64, m)
        if fa is not None:
            xa.copy_(fa[i : i + m])
        else:
            xa.zero_()
        if fb is not None:
            xb.copy_(fb[i : i + m])
        else:
            xb.zero_()
        g.sumsq_a += float(torch.dot(xa, xa))
        g.sumsq_b += float(torch.dot(xb, xb))
        g.dot += float(torch.dot(xa, xb))
        # Exact in float64: the product of two float32 values never rounds to 0.
        prod = torch.mul(xa, xb, out=ws.buffer("st_p", torch.float64, m))
        g.both_nonzero += int(torch.count_nonzero(prod))
        g.conflicts += int(torch.count_nonzero(prod < 0))
        change = xb.sub_(xa)
        g.sumsq_change += float(torch.dot(change, change))
    return g


class DiffStats:
    """Per-layer and total diff statistics, fed one tensor pair at a time."""

    def __init__(self, workspace: Workspace | None = None) -> None:
        self.ws = workspace or Workspace()
        self.layers: dict[int | None, DiffGroup] = {}
        self.total = DiffGroup()

    def observe(self, name: str, a: torch.Tensor | None, b: torch.Tensor | None) -> DiffGroup:
        """Add one tensor; returns its own ``DiffGroup``."""
        g = diff_tensor(a, b, self.ws, name)
        self.layers.setdefault(layer_of(name), DiffGroup()).merge(g)
        self.total.merge(g)
        return g

    def summary(self) -> dict[str, object]:
        """JSON-ready: ``{"total": {...}, "layers": [{"layer": 0, ...}, ...]}``, layers in order."""
        keys = sorted(self.layers, key=lambda k: (k is None, k if k is not None else 0))
        return {
            "total": self.total.summary(),
            "layers": [{"layer": k, **self.layers[k].summary()} for k in keys],
        }
