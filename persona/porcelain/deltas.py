"""One tensor of a vector's delta, in float32, whatever form the vector stores it in.

Why one home: a vector holds a tensor as a stored delta, as the fine-tuned
tensor (delta = W_ft - W_base) or as LoRA factors (delta = scale * B @ A);
`diff --weights` and `vector test` both need the plain delta, and the merge
kernels have their own streaming terms (persona.merge.terms) for the same three
forms.
"""

from __future__ import annotations

from typing import Any

from persona.repo import Repository
from persona.store import objects as obj


def base_tree(repo: Repository, vector: obj.Vector) -> obj.Tree:
    """The weights of the base a vector is pinned to."""
    return repo.get(repo.get(vector.base, obj.Base).weights, obj.Tree)


def vector_delta(repo: Repository, vector: obj.Vector, name: str, verify: bool = False,
                 base: obj.Tree | None = None) -> Any:
    """The vector's delta for tensor ``name`` in float32, or None when it does not touch it.

    ``base`` is the vector's base tree, for callers that read many tensors
    (loaded here when a fine-tuned tensor needs it and none is given).
    """
    import torch

    from persona.store.tensors import load_tensor

    def load(oid: str) -> torch.Tensor:
        return load_tensor(repo.objects, oid, verify=verify).to(torch.float32)

    if name in vector.deltas:
        return load(vector.deltas[name])
    if name in vector.finetuned:
        tree = base if base is not None else base_tree(repo, vector)
        return load(vector.finetuned[name]) - load(tree.entries[name].blob)
    if name in vector.factors:
        factor = vector.factors[name]
        return (load(factor.B) @ load(factor.A)) * factor.scale
    return None
