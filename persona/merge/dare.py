"""DARE (Yu et al., 2023): drop each delta entry with probability 1 - density and
rescale the survivors by 1 / density, then merge linearly or the TIES way.

- ``dare_linear``: W = W_base + lambda * sum_i alpha_i * drop(t_i) / density_i;
- ``dare_ties``: s_i = alpha_i * drop(t_i) / density_i, then TIES' elect and
  disjoint mean (no magnitude trim: the random drop replaces it).

The random stream of a term is a ``torch.Generator`` seeded by the first 8 bytes
of sha256 over (recipe seed, tensor name, vector id), consumed in flat order,
so a result never depends on the order of the terms, on threads, or on how the
tensor is chunked (``torch.rand`` on a CPU generator yields the same sequence
whether drawn at once or in pieces). Unlike peft and mergekit, which draw from
the global RNG with ``torch.bernoulli``, two runs of a recipe give the same bytes.
An entry is kept iff its uniform draw u (float32 in [0, 1)) satisfies u < density.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from persona.merge._chunks import is_finite, row_chunks
from persona.merge._disjoint import SignSplit, finish_chunk, refuse_nonfinite_term
from persona.merge.terms import Term
from persona.merge.workspace import Workspace


def dare_seed(seed: int, name: str, vector_id: str) -> int:
    """The 64-bit seed of one (recipe seed, tensor, vector) random stream."""
    key = json.dumps(["persona-dare-v1", int(seed), name, vector_id]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def dare_generator(seed: int, name: str, vector_id: str) -> torch.Generator:
    return torch.Generator().manual_seed(dare_seed(seed, name, vector_id))


def _dropped_rows(
    term: Term,
    gen: torch.Generator,
    r0: int,
    r1: int,
    out: torch.Tensor,
    ws: Workspace,
    name: str,
) -> torch.Tensor:
    """``out = alpha * keep * t / density`` for rows r0:r1, keep ~ Bernoulli(density)."""
    p = term.density
    term.write_rows(out, r0, r1, term.alpha / p)
    # Checked before the drop: a NaN is refused whether or not its entry is dropped.
    if not is_finite(out):
        refuse_nonfinite_term(term, name)
    if p < 1.0:
        m = out.numel()
        u = torch.rand(m, generator=gen, out=ws.buffer("dare_u", torch.float32, m))
        out.mul_(torch.lt(u, p, out=u))  # keep = 1.0 / 0.0; values are finite here
    return out


def dare_linear(
    name: str,
    base: torch.Tensor,
    terms: Sequence[Term],
    lambda_: float,
    seed: int,
    out: torch.Tensor,
    ws: Workspace,
) -> torch.Tensor:
    """Write the DARE-linear merge into ``out``; returns ``out``."""
    gens = [dare_generator(seed, name, t.vector_id) for t in terms]
    base_flat, out_flat = base.reshape(-1), out.view(-1)
    for r0, r1, e0, e1 in row_chunks(base.shape, ws):
        m = e1 - e0
        acc = ws.buffer("acc", torch.float32, m)
        for i, (term, gen) in enumerate(zip(terms, gens, strict=True)):
            if i == 0:
                _dropped_rows(term, gen, r0, r1, acc, ws, name)
            else:
                acc.add_(
                    _dropped_rows(term, gen, r0, r1, ws.buffer("s", torch.float32, m), ws, name)
                )
        tmp = ws.buffer("acc_tmp", torch.float32, m)
        finish_chunk(acc, lambda_, base_flat[e0:e1], out_flat[e0:e1], tmp, name)
    return out


def dare_ties(
    name: str,
    base: torch.Tensor,
    terms: Sequence[Term],
    lambda_: float,
    elect: str,
    seed: int,
    out: torch.Tensor,
    ws: Workspace,
) -> torch.Tensor:
    """Write the DARE-TIES merge into ``out``; returns ``out``."""
    gens = [dare_generator(seed, name, t.vector_id) for t in terms]
    base_flat, out_flat = base.reshape(-1), out.view(-1)
    for r0, r1, e0, e1 in row_chunks(base.shape, ws):
        m = e1 - e0
        acc = SignSplit(ws, m)
        for term, gen in zip(terms, gens, strict=True):
            acc.add(
                _dropped_rows(term, gen, r0, r1, ws.buffer("s", torch.float32, m), ws, name),
                None,
                e0,
            )
        finish_chunk(acc.finish(elect), lambda_, base_flat[e0:e1], out_flat[e0:e1], acc.tmp, name)
    return out
