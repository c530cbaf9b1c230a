"""TIES merging (Yadav et al., 2023), per tensor, exactly as DESIGN.md section 4:

1. scale first: s_i = alpha_i * t_i, so a negated vector votes *against*;
2. trim: keep exactly k_i = ceil(density_i * numel) largest |s_i| (ties at the
   cut-off: lowest flat index first), or the vector's model-wide cut under
   ``trim: global``;
3. elect: e = sign(sum_i s_i) (``count``: sign(sum_i sign(s_i))), 0 -> +;
4. disjoint mean over the kept s_i whose sign is e (divided by their count,
   not by a sum of weights: mergekit's ``normalize`` divides by the weights
   and turns a lone alpha=-0.5 vector back into +t, its issue #213);
5. W = W_base + lambda * m, in float32, cast once.

Cost per vector: one selection (one or two passes over its delta, see
``select``), then one accumulation pass shared by all vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from persona.errors import InvalidInput
from persona.merge._chunks import is_finite, row_chunks, term_chunks
from persona.merge._disjoint import SignSplit, finish_chunk, refuse_nonfinite_term
from persona.merge.params import keep_count
from persona.merge.select import Cut, GlobalCut, RadixSelect, run_select
from persona.merge.terms import Term
from persona.merge.workspace import Workspace


def trim_cuts(
    name: str,
    terms: Sequence[Term],
    ws: Workspace,
    global_cuts: Mapping[str, GlobalCut] | None = None,
) -> list[tuple[Cut, bool]]:
    """Each term's keep set, and whether its values were already checked for NaN/Inf."""
    cuts = []
    for term in terms:
        n = term.shape.numel()
        if global_cuts is not None:
            gc = global_cuts.get(term.vector_id)
            if gc is None:
                raise InvalidInput(
                    f"no global threshold for vector {term.vector_id!r}",
                    "run the global trim passes over every vector first",
                )
            sel = gc.select_for(name, n)
        else:
            label = f"vector {term.vector_id!r}: tensor {name!r}"
            sel = RadixSelect(n, keep_count(term.density, n), label=label, zeros_matter=False)
        checked = sel.cut is None and sel.phase == "coarse"  # the coarse pass sees every value
        run_select(sel, lambda term=term: term_chunks(term, term.alpha, ws), ws)
        cuts.append((sel.cut, checked))
    return cuts


def ties(
    name: str,
    base: torch.Tensor,
    terms: Sequence[Term],
    lambda_: float,
    elect: str,
    out: torch.Tensor,
    ws: Workspace,
    global_cuts: Mapping[str, GlobalCut] | None = None,
) -> torch.Tensor:
    """Write the TIES merge of ``terms`` onto ``base`` into ``out``; returns ``out``."""
    cuts = trim_cuts(name, terms, ws, global_cuts)
    base_flat, out_flat = base.reshape(-1), out.view(-1)
    for r0, r1, e0, e1 in row_chunks(base.shape, ws):
        acc = SignSplit(ws, e1 - e0)
        for term, (cut, checked) in zip(terms, cuts, strict=True):
            s = ws.buffer("s", torch.float32, e1 - e0)
            term.write_rows(s, r0, r1, term.alpha)
            if not checked and not is_finite(s):
                refuse_nonfinite_term(term, name)
            acc.add(s, cut, e0)
        m = acc.finish(elect)
        finish_chunk(m, lambda_, base_flat[e0:e1], out_flat[e0:e1], acc.tmp, name)
    return out
