"""Chunk iteration and cheap finiteness screens shared by the merge kernels."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from persona.merge.terms import Term, row_len
from persona.merge.workspace import Workspace


def row_chunks(
    shape: torch.Size | tuple[int, ...], ws: Workspace
) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(r0, r1, e0, e1)``: row range and flat element range of each chunk."""
    n = row_len(shape)
    numel = math.prod(int(d) for d in shape)
    rows = numel // n
    step = ws.rows_per_chunk(n)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        yield r0, r1, r0 * n, r1 * n


def term_chunks(
    term: Term, factor: float, ws: Workspace, role: str = "s"
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(offset, chunk)``: ``factor * delta`` one float32 chunk at a time.

    The chunk is a workspace view, overwritten by the next iteration.
    """
    for r0, r1, e0, e1 in row_chunks(term.shape, ws):
        buf = ws.buffer(role, torch.float32, e1 - e0)
        term.write_rows(buf, r0, r1, factor)
        yield e0, buf


def is_finite(x: torch.Tensor) -> bool:
    """True when ``x`` holds no NaN/Inf.

    A float32 sum is one fast read-only pass and is non-finite whenever any
    element is; only then (or on a genuine overflow of the sum) is the exact,
    slower ``isfinite`` check run.
    """
    if x.numel() == 0:
        return True
    if math.isfinite(float(x.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(x).all())
