"""Shared steps of the sign-electing merges (ties, dare_ties) and of every merge's end.

The disjoint mean needs, per entry, the sum and the count of the kept values of
the elected sign, but the sign is only known once every vector has been seen.
Instead of keeping every trimmed vector (memory grows with the number of
vectors) or computing each twice, one pass keeps four accumulators per entry:
the sum of the positive kept values, the sum of the magnitudes of the negative
kept values, and how many of each. Then

    sum election:   e = + iff pos_sum - neg_mag >= 0   (i.e. sign(sum_i s_i), 0 -> +)
    count election: e = + iff pos_count >= neg_count    (i.e. sign(sum_i sign(s_i)))
    m = pos_sum / max(1, pos_count) if e = + else -neg_mag / max(1, neg_count).

Each sum is accumulated in float32 in term order, so ``m`` equals a float32
``sum_i s_i[sign(s_i) == e] / count`` bit for bit; ``sum_i s_i`` for the sum
election is evaluated as ``pos_sum + neg_sum`` (the same value in exact
arithmetic; only a float32 rounding of a near-zero total could differ).
"""

from __future__ import annotations

import torch

from persona.errors import InvalidInput
from persona.merge._chunks import is_finite
from persona.merge.select import Cut
from persona.merge.terms import Term
from persona.merge.workspace import Workspace

WIDE_DTYPES = (torch.float32, torch.float64)
"""Output dtypes a finite float32 value always fits in; any other cast can overflow
(float16 above 65504, bfloat16 in the last sliver below float32's maximum)."""


class SignSplit:
    """Per-chunk accumulators of the kept positive and negative values and their counts.

    Everything is float32 arithmetic on purpose: on CPU, comparisons that write
    bool masks, ``masked_fill`` and ``torch.where`` cost 5-30x a float add, so
    counts are accumulated as ``sign(kept part)`` and the final selection is
    ``pos * e + neg * (e - 1)`` with e in {0, 1} (exact: x * 1 + y * 0 == x).
    """

    def __init__(self, ws: Workspace, m: int) -> None:
        self.pos = ws.buffer("acc_pos", torch.float32, m)
        self.neg = ws.buffer("acc_neg", torch.float32, m)  # magnitudes of negative values
        self.pcnt = ws.buffer("acc_pcnt", torch.float32, m)
        self.ncnt = ws.buffer("acc_ncnt", torch.float32, m)
        self.tmp = ws.buffer("acc_tmp", torch.float32, m)
        self.m = m
        self._first = True

    def add(self, s: torch.Tensor, cut: Cut | None, offset: int) -> None:
        """Accumulate the entries of chunk ``s`` that ``cut`` keeps (``None``: all nonzero).

        ``s`` is destroyed (negated in place). ``offset`` is the chunk's flat
        position, to place the cut's tie split.
        """
        if cut is None:
            self._add_range(s, 0, self.m, 0.0)
        else:
            before, after = cut.float_bounds()
            split = min(self.m, max(0, cut.split - offset))
            if split > 0:
                self._add_range(s, 0, split, before)
            if split < self.m:
                self._add_range(s, split, self.m, after)
        self._first = False

    def _add_range(self, s: torch.Tensor, a: int, b: int, c: float) -> None:
        """Add ``s[a:b]`` where ``|s| > c``: ``torch.threshold`` trims and splits in one pass."""
        s, tmp = s[a:b], self.tmp[a:b]
        pairs = ((self.pos[a:b], self.pcnt[a:b]), (self.neg[a:b], self.ncnt[a:b]))
        for i, (acc, cnt) in enumerate(pairs):
            if i:
                s.neg_()  # second round: the negative values, as magnitudes
            if self._first:
                torch.sign(torch.threshold(s, c, 0.0, out=acc), out=cnt)
            else:
                acc.add_(torch.threshold(s, c, 0.0, out=tmp))
                cnt.add_(tmp.sign_())

    def finish(self, elect: str) -> torch.Tensor:
        """Elect the sign and return the disjoint mean (a workspace view)."""
        e = self.tmp
        if elect == "sum":
            torch.ge(self.pos, self.neg, out=e)  # pos_sum + neg_sum >= 0; 0 -> +
        else:
            torch.ge(self.pcnt, self.ncnt, out=e)
        pos = self.pos.div_(self.pcnt.clamp_(min=1.0)).mul_(e)
        neg = self.neg.div_(self.ncnt.clamp_(min=1.0)).mul_(e.sub_(1.0))
        return pos.add_(neg)


def finish_chunk(
    delta: torch.Tensor,
    lambda_: float,
    base_chunk: torch.Tensor,
    out_chunk: torch.Tensor,
    tmp: torch.Tensor,
    name: str,
) -> None:
    """``out_chunk = base + lambda_ * delta`` computed in float32, cast once.

    ``delta`` (float32) is overwritten. A NaN/Inf in the base, or an overflow,
    shows up in the float32 result and is refused here.
    """
    if lambda_ != 1.0:
        delta.mul_(lambda_)
    if base_chunk.dtype == torch.float32:
        delta.add_(base_chunk)
    else:
        delta.add_(tmp.copy_(base_chunk))
    if not is_finite(delta):
        if not is_finite(base_chunk):
            raise InvalidInput(
                f"base tensor {name!r} contains NaN or infinite values",
                "the base checkpoint is corrupt; re-import it",
            )
        raise InvalidInput(
            f"merging {name!r} overflows float32", "lower lambda or the vectors' alphas"
        )
    if out_chunk.data_ptr() != delta.data_ptr():
        out_chunk.copy_(delta)
    if out_chunk.dtype not in WIDE_DTYPES and not is_finite(out_chunk):
        raise InvalidInput(
            f"merged tensor {name!r} does not fit in {out_chunk.dtype}",
            "build with dtype: float32, or lower lambda or the vectors' alphas",
        )


def refuse_nonfinite_term(term: Term, name: str) -> None:
    raise InvalidInput(
        f"vector {term.vector_id!r}: tensor {name!r} contains NaN or infinite values",
        "the vector is corrupt or diverged in training; re-create it",
    )
