"""Database rows derived from objects: one place, used by imports and by fsck --repair."""

from __future__ import annotations

import math
import time

from persona.db.models import BaseRow, BuildRow, VectorRow
from persona.repo import Repository
from persona.store import objects as obj


def tree_parameters(tree: obj.Tree) -> int:
    return sum(math.prod(e.shape) for e in tree.entries.values())


def base_row(repo: Repository, oid: str, name: str) -> BaseRow:
    base = repo.get(oid, obj.Base)
    tree = repo.get(base.weights, obj.Tree)
    return BaseRow(id=oid, name=name, architecture=base.architecture, parameters=tree_parameters(tree),
                   tensors=len(tree.entries), source=base.source, created=time.time())


def vector_parameters(repo: Repository, vector: obj.Vector) -> int:
    total = 0
    for blob in [*vector.deltas.values(), *vector.finetuned.values()]:
        total += repo.objects.open_blob(blob).layout.numel
    for factor in vector.factors.values():
        total += repo.objects.open_blob(factor.A).layout.numel + repo.objects.open_blob(factor.B).layout.numel
    return total


def vector_row(repo: Repository, oid: str, name: str) -> VectorRow:
    vector = repo.get(oid, obj.Vector)
    return VectorRow(id=oid, name=name, kind=vector.vector_kind, base_id=vector.base,
                     tensors=len(vector.touched()), parameters=vector_parameters(repo, vector),
                     provenance=vector.provenance, created=time.time())


def build_row(repo: Repository, oid: str, seconds: float = 0.0) -> BuildRow:
    build = repo.get(oid, obj.Build)
    return BuildRow(id=oid, recipe_id=build.recipe, base_id=build.base, weights_id=build.weights,
                    dtype=build.dtype, seconds=seconds, created=time.time())
