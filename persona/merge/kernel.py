"""``merge_tensor``: the one entry point the streaming engine calls per tensor.

It validates everything cheap first (no work starts on a bad input), then runs
the method. Everything is refused loudly: an empty term list, a shape that is
not the base's, a density outside (0, 1], NaN/Inf in the base or any vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from persona.errors import Incompatible, InvalidInput
from persona.merge.dare import dare_linear, dare_ties
from persona.merge.params import MergeParams
from persona.merge.select import GlobalCut
from persona.merge.task_arithmetic import task_arithmetic
from persona.merge.terms import DenseTerm, DiffTerm, LowRankTerm, Term
from persona.merge.ties import ties
from persona.merge.workspace import Workspace


def validate_terms(name: str, base: torch.Tensor, terms: Sequence[Term]) -> None:
    """Refuse what cannot be merged, before any pass over the data."""
    if not terms:
        raise InvalidInput(
            f"nothing to merge into {name!r}: no vectors", "list at least one vector in the recipe"
        )
    if not base.is_floating_point():
        raise Incompatible(
            f"base tensor {name!r} has dtype {base.dtype}; only float tensors can be merged",
            "leave integer buffers out of the merge",
        )
    seen: set[str] = set()
    for term in terms:
        if not isinstance(term, DenseTerm | DiffTerm | LowRankTerm):
            raise TypeError(f"not a merge term: {type(term).__name__}")
        term.validate(name, base.shape)
        if term.vector_id in seen:
            raise InvalidInput(
                f"vector {term.vector_id!r} appears twice in the merge of {name!r}",
                "list each vector once; combine the alphas instead",
            )
        seen.add(term.vector_id)


def merge_tensor(
    name: str,
    base: torch.Tensor,
    terms: Sequence[Term],
    params: MergeParams,
    out_dtype: torch.dtype,
    workspace: Workspace,
    global_thresholds: Mapping[str, GlobalCut] | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge ``terms`` onto ``base`` for tensor ``name``; return the result in ``out_dtype``.

    The result is a fresh tensor the caller owns (or ``out``, if given: a
    contiguous tensor of the base's shape and ``out_dtype`` that is written in
    place). Nothing returned aliases the workspace. ``name`` seeds DARE and
    places global-trim ties, so pass the tensor's name as stored.

    ``global_thresholds`` (vector id -> ``GlobalCut`` from ``select.GlobalTopK``)
    is required when ``params.trim == 'global'`` and ignored otherwise.
    """
    if not isinstance(params, MergeParams):
        raise TypeError("params must be a MergeParams")
    if not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise InvalidInput(
            f"output dtype {out_dtype} is not a float dtype", "use bfloat16, float16 or float32"
        )
    validate_terms(name, base, terms)
    if out is None:
        out = torch.empty(base.shape, dtype=out_dtype)
    elif out.shape != base.shape or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError("out must be contiguous, with the base's shape and out_dtype")
    elif any(_shares_memory(out, t) for t in _inputs(base, terms)):
        raise ValueError("out must not share memory with the base or a delta")
    if base.numel() == 0:
        return out
    base = base.detach()
    lam = float(params.lambda_)
    if params.method == "task_arithmetic":
        return task_arithmetic(name, base, terms, lam, out, workspace)
    if params.method == "ties":
        cuts = None
        if params.trim == "global":
            if global_thresholds is None:
                raise InvalidInput(
                    "trim: global needs the model-wide thresholds",
                    "compute them with persona.merge.select.GlobalTopK before merging",
                )
            cuts = global_thresholds
        return ties(name, base, terms, lam, params.elect, out, workspace, cuts)
    if params.method == "dare_linear":
        return dare_linear(name, base, terms, lam, params.seed, out, workspace)
    return dare_ties(name, base, terms, lam, params.elect, params.seed, out, workspace)


def _inputs(base: torch.Tensor, terms: Sequence[Term]) -> list[torch.Tensor]:
    tensors = [base]
    for t in terms:
        if isinstance(t, DenseTerm):
            tensors.append(t.delta)
        elif isinstance(t, DiffTerm):
            tensors.extend([t.finetuned, t.base])
        else:
            tensors.extend([t.A, t.B])
    return tensors


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges of two tensors' storages overlap."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    a0 = a.untyped_storage().data_ptr()
    b0 = b.untyped_storage().data_ptr()
    return a0 < b0 + b.untyped_storage().nbytes() and b0 < a0 + a.untyped_storage().nbytes()
