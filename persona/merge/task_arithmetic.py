"""Task arithmetic: W = W_base + lambda * sum_i alpha_i * t_i (Ilharco et al., 2022).

A negative alpha subtracts a behaviour. LoRA terms add ``alpha * scale * B @ A``
straight into the float32 accumulator (one ``addmm_`` per chunk of rows), so a
LoRA delta is never materialised whole and never mixed with another vector's
factors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from persona.merge._chunks import is_finite, row_chunks
from persona.merge._disjoint import finish_chunk, refuse_nonfinite_term
from persona.merge.terms import Term
from persona.merge.workspace import Workspace


def task_arithmetic(
    name: str,
    base: torch.Tensor,
    terms: Sequence[Term],
    lambda_: float,
    out: torch.Tensor,
    ws: Workspace,
) -> torch.Tensor:
    """Write the merged tensor into ``out`` (base's shape, any float dtype); returns ``out``."""
    base_flat, out_flat = base.reshape(-1), out.view(-1)
    direct = out.dtype == torch.float32
    for r0, r1, e0, e1 in row_chunks(base.shape, ws):
        m = e1 - e0
        tmp = ws.buffer("acc_tmp", torch.float32, m)
        acc = out_flat[e0:e1] if direct else ws.buffer("acc", torch.float32, m)
        terms[0].write_rows(acc, r0, r1, terms[0].alpha)
        for term in terms[1:]:
            term.add_rows(acc, r0, r1, term.alpha, tmp)
        if not is_finite(acc):
            _find_nonfinite(name, terms, r0, r1, tmp)
        finish_chunk(acc, lambda_, base_flat[e0:e1], out_flat[e0:e1], tmp, name)
    return out


def _find_nonfinite(name: str, terms: Sequence[Term], r0: int, r1: int, tmp: torch.Tensor) -> None:
    """Name the vector whose rows hold a NaN/Inf (the sum only says that one does)."""
    for term in terms:
        term.write_rows(tmp, r0, r1, 1.0)
        if not is_finite(tmp):
            refuse_nonfinite_term(term, name)
    # Finite inputs whose weighted sum overflows: let finish_chunk report it.
