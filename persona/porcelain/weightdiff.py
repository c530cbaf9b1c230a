"""``persona diff --weights``: how two recipes differ in the weights they produce.

Two views, both streamed one tensor at a time:

- builds: the merged delta of each recipe (build minus base), per layer: the L2
  norm of the change from A to B, the cosine between the two merged deltas and
  their sign-conflict rate;
- vectors: every pair of vectors in recipe B, each scaled by its alpha, per
  pair: cosine and sign-conflict rate, i.e. the interference TIES resolves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from persona.porcelain.deltas import vector_delta
from persona.porcelain.engine import build_recipe
from persona.repo import Repository
from persona.store import objects as obj


@dataclass
class WeightDiff:
    builds: dict[str, Any]
    vectors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"builds": self.builds, "vectors": self.vectors}

    def render(self) -> str:
        def num(value: Any, fmt: str = ".4g") -> str:
            return "-" if value is None else format(value, fmt)

        lines = ["weights (merged delta A -> B, per layer):",
                 f"  {'layer':>6} {'tensors':>7} {'|B-A|':>10} {'|A|':>10} {'|B|':>10} {'cos(A,B)':>9} {'conflict':>9}"]
        rows = [*self.builds["layers"], {"layer": "total", **self.builds["total"]}]
        for row in rows:
            layer = "other" if row["layer"] is None else row["layer"]
            lines.append(f"  {layer!s:>6} {row['tensors']:>7} {num(row['l2_change']):>10} {num(row['norm_a']):>10} "
                         f"{num(row['norm_b']):>10} {num(row['cosine'], '.3f'):>9} "
                         f"{num(row['sign_conflict_rate'], '.2%'):>9}")
        if self.vectors:
            lines.append("vectors in B (alpha applied):")
            for pair in self.vectors:
                lines.append(f"  {pair['a']} vs {pair['b']}: cosine {num(pair['cosine'], '.3f')}, "
                             f"sign conflicts {num(pair['overlap_conflict_rate'], '.2%')} of shared entries")
        return "\n".join(lines)


def _delta(repo: Repository, vector: obj.Vector, name: str, alpha: float, base: obj.Tree):
    delta = vector_delta(repo, vector, name, verify=True, base=base)
    return None if delta is None else delta * alpha


def _merged_delta(repo: Repository, entry: obj.TreeEntry | None, base_entry: obj.TreeEntry | None, base):
    """A build's tensor minus the base's (None when the build kept the base's blob)."""
    import torch

    from persona.store.tensors import load_tensor

    if entry is None or (base_entry is not None and entry.blob == base_entry.blob):
        return None
    tensor = load_tensor(repo.objects, entry.blob, verify=True).to(torch.float32)
    return tensor - base if base is not None else tensor


def weight_diff(repo: Repository, commit_a: str, commit_b: str) -> WeightDiff:
    import torch

    from persona.merge.stats import DiffStats
    from persona.store.tensors import load_tensor

    recipe_a, recipe_b = repo.commit(commit_a).recipe, repo.commit(commit_b).recipe
    build_a = repo.get(build_recipe(repo, recipe_a).id, obj.Build)
    build_b = repo.get(build_recipe(repo, recipe_b).id, obj.Build)
    tree_a, tree_b = repo.get(build_a.weights, obj.Tree), repo.get(build_b.weights, obj.Tree)
    base_a = repo.get(repo.get(build_a.base, obj.Base).weights, obj.Tree)
    stats = DiffStats()
    for name in sorted(set(tree_a.entries) | set(tree_b.entries)):
        base_entry = base_a.entries.get(name)
        ea, eb = tree_a.entries.get(name), tree_b.entries.get(name)
        if ea and eb and base_entry and ea.blob == eb.blob == base_entry.blob:
            continue
        base = load_tensor(repo.objects, base_entry.blob, verify=True).to(torch.float32) if base_entry else None
        stats.observe(name, _merged_delta(repo, ea, base_entry, base), _merged_delta(repo, eb, base_entry, base))
    body = repo.recipe(recipe_b).body
    vectors = [(v["name"], float(v["alpha"]), repo.get(v["id"], obj.Vector)) for v in body["vectors"]]
    base_b = repo.get(repo.get(build_b.base, obj.Base).weights, obj.Tree)  # the base recipe B's vectors share
    pairs = []
    for (name_a, alpha_a, va), (name_b, alpha_b, vb) in combinations(vectors, 2):
        pair_stats = DiffStats()
        for tensor in sorted(set(va.touched()) & set(vb.touched())):
            pair_stats.observe(tensor, _delta(repo, va, tensor, alpha_a, base_b),
                               _delta(repo, vb, tensor, alpha_b, base_b))
        pairs.append({"a": name_a, "b": name_b, **pair_stats.total.summary()})
    repo.remember_verified()
    return WeightDiff(stats.summary(), pairs)
