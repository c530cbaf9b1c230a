"""Compute a recipe's merged weights into the store, streaming tensor by tensor.

Everything that can be refused is checked before the first tensor is merged: a
vector made for another base, a tensor a vector touches that the base lacks, a
shape mismatch. Then each base tensor is read through its memory map, merged
with the (at most a few) vector terms that touch it, and written as a blob, so
peak memory is a few of the largest tensors whatever the model's size. Tensors
no vector touches keep the base's own blob: a LoRA recipe stores only what it
changes. The result is a ``build`` object, looked up by recipe and dtype first,
so rebuilding a recipe (or rolling back to one) costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from persona.errors import Incompatible
from persona.repo import Repository
from persona.store import objects as obj

DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
Progress = Callable[[int, int, str], None]


@dataclass
class BuildResult:
    id: str
    recipe_id: str
    weights: str
    dtype: str
    cached: bool
    seconds: float
    merged_tensors: int
    reused_tensors: int

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class _Plan:
    base_id: str
    tree: obj.Tree
    vectors: list[tuple[dict[str, Any], obj.Vector]]
    touched: dict[str, list[int]]  # tensor name -> indexes into vectors


def plan(repo: Repository, body: dict[str, Any]) -> _Plan:
    """Load and check everything the merge needs; no tensor data is read."""
    base_id = body["base"]["id"]
    base = repo.get(base_id, obj.Base)
    tree = repo.get(base.weights, obj.Tree)
    vectors = []
    touched: dict[str, list[int]] = {}
    if not body["vectors"]:
        raise Incompatible("the recipe selects no vector", "add at least one vector to the recipe")
    for index, spec in enumerate(body["vectors"]):
        vector = repo.get(spec["id"], obj.Vector)
        if vector.base != base_id:
            raise Incompatible(f"vector {spec['name']!r} was made for base {vector.base[:12]}, "
                               f"not {body['base']['name']} ({base_id[:12]})",
                               "train or import it against this base")
        for name in vector.touched():
            entry = tree.entries.get(name)
            if entry is None:
                raise Incompatible(f"vector {spec['name']!r} changes {name}, which the base does not have",
                                   "the vector was made for another architecture")
            dense = vector.deltas.get(name) or vector.finetuned.get(name)
            if dense is not None:
                shape = repo.objects.open_blob(dense).layout.shape
            else:
                factor = vector.factors[name]
                a = repo.objects.open_blob(factor.A).layout.shape
                b = repo.objects.open_blob(factor.B).layout.shape
                shape = (b[0], a[1]) if len(a) == 2 and len(b) == 2 and a[0] == b[1] else None
            if shape is None or tuple(shape) != tuple(entry.shape):
                raise Incompatible(f"vector {spec['name']!r}: {name} has shape {shape}, the base has "
                                   f"{list(entry.shape)}", "the vector was made for another base")
            touched.setdefault(name, []).append(index)
        vectors.append((spec, vector))
    return _Plan(base_id, tree, vectors, touched)


def find_cached(repo: Repository, recipe_id: str, dtype: str | None) -> str | None:
    from sqlalchemy import select

    from persona.db.models import BuildRow

    def work(session) -> list[str]:
        query = select(BuildRow.id, BuildRow.dtype).where(BuildRow.recipe_id == recipe_id)
        return [row.id for row in session.execute(query) if dtype is None or row.dtype == dtype]

    for build_id in repo.db.read(work):
        if repo.objects.freshen(build_id):  # freshened: a concurrent gc now spares it
            return build_id
    return None


class _DeltaBuffers:
    """One float32 buffer per vector, grown to the largest tensor it held, reused for every tensor."""

    def __init__(self) -> None:
        self._buffers: dict[int, Any] = {}

    def get(self, index: int, numel: int):
        import torch

        from persona.merge.terms import MATERIALISE_MAX_ELEMS

        if numel > MATERIALISE_MAX_ELEMS:
            return None  # streamed chunk by chunk, never formed whole
        buf = self._buffers.get(index)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[index] = torch.empty(numel, dtype=torch.float32)
        return buf


def _terms(repo: Repository, p: _Plan, name: str, verify: bool, base_tensor=None,
           buffers: _DeltaBuffers | None = None):
    """The merge terms of one tensor; ``base_tensor`` is the base's (loaded here when not given)."""
    from persona.merge.terms import DenseTerm, DiffTerm, LowRankTerm
    from persona.store.tensors import load_tensor

    terms = []
    for index in p.touched.get(name, []):
        spec, vector = p.vectors[index]
        if name in vector.deltas:
            terms.append(DenseTerm(load_tensor(repo.objects, vector.deltas[name], verify), float(spec["alpha"]),
                                   float(spec["density"]), spec["id"]))
        elif name in vector.finetuned:
            if base_tensor is None:
                base_tensor = load_tensor(repo.objects, p.tree.entries[name].blob, verify)
            finetuned = load_tensor(repo.objects, vector.finetuned[name], verify)
            buffer = buffers.get(index, finetuned.numel()) if buffers is not None else None
            terms.append(DiffTerm(finetuned, base_tensor, float(spec["alpha"]), float(spec["density"]), spec["id"],
                                  buffer=buffer))
        else:
            factor = vector.factors[name]
            terms.append(LowRankTerm(load_tensor(repo.objects, factor.A, verify),
                                     load_tensor(repo.objects, factor.B, verify), factor.scale,
                                     float(spec["alpha"]), float(spec["density"]), spec["id"]))
    return terms


def build_recipe(repo: Repository, recipe_id: str, dtype: str | None = None, verify: bool = True,
                 progress: Progress | None = None) -> BuildResult:
    """The build of a stored recipe: from the cache, or merged now."""
    cached = cached_build(repo, recipe_id, dtype)
    if cached is not None:
        return cached
    stream = merge_stream(repo, recipe_id, dtype, verify, progress, emit=False)
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value


def output_dtype(repo: Repository, recipe_id: str, dtype: str | None) -> str | None:
    """The safetensors dtype name a build is asked for (None: each tensor keeps the base's)."""
    dtype = dtype or repo.recipe(recipe_id).body.get("dtype")
    return DTYPE_NAMES.get(dtype) if dtype else None


def cached_build(repo: Repository, recipe_id: str, dtype: str | None = None) -> BuildResult | None:
    """The stored build of a recipe in that dtype, if there is one."""
    cached = find_cached(repo, recipe_id, output_dtype(repo, recipe_id, dtype))
    if cached is None:
        return None
    build = repo.get(cached, obj.Build)
    return BuildResult(cached, recipe_id, build.weights, build.dtype, True, 0.0, 0, 0)


def merge_stream(repo: Repository, recipe_id: str, dtype: str | None = None, verify: bool = True,
                 progress: Progress | None = None, emit: bool = True):
    """Merge a recipe into the store tensor by tensor; a generator whose return value is the BuildResult.

    With ``emit`` it yields ``(name, tensor)`` for every tensor of the output in
    name order, merged or kept from the base, as soon as it is stored: that lets
    ``persona build`` of a recipe not merged yet write the model directory in the
    same pass (one read of the inputs, no re-read of the merged blobs). The
    build object and its index row are written after the last tensor.
    """
    from persona.merge.kernel import merge_tensor
    from persona.merge.params import MergeParams
    from persona.merge.workspace import Workspace
    from persona.porcelain.index import build_row
    from persona.store.tensors import dtype_name, load_tensor, put_tensor
    from persona.tensorio.dtypes import torch_dtype

    body = repo.recipe(recipe_id).body
    want = output_dtype(repo, recipe_id, dtype)
    started = time.perf_counter()
    p = plan(repo, body)
    params = MergeParams(method=body["method"], lambda_=float(body["lambda"]), density=float(body["density"]),
                         seed=int(body["seed"]), elect=body.get("elect", "sum"), trim=body.get("trim", "tensor"))
    workspace = Workspace()
    buffers = _DeltaBuffers()
    global_thresholds = None
    if params.trim == "global":
        global_thresholds = _global_thresholds(repo, p, verify, workspace)
    entries: dict[str, obj.TreeEntry] = {}
    names = sorted(p.tree.entries)
    total = sum(_nbytes(p.tree.entries[n]) for n in names)
    done = merged = reused = 0
    out_dtypes = set()
    for position, name in enumerate(names):
        entry = p.tree.entries[name]
        for ahead in entering_window(names, position):
            for oid in _blobs_read(p, ahead, want, emit):
                repo.objects.prefetch(oid)
        out_dtype = want or entry.dtype
        out_dtypes.add(out_dtype)
        if name not in p.touched and out_dtype == entry.dtype:
            entries[name] = entry
            reused += 1
            result = load_tensor(repo.objects, entry.blob, verify) if emit else None
        else:
            base_tensor = load_tensor(repo.objects, entry.blob, verify)
            if name in p.touched:
                result = merge_tensor(name, base_tensor, _terms(repo, p, name, verify, base_tensor, buffers), params,
                                      torch_dtype(out_dtype), workspace, global_thresholds)
                merged += 1
            else:
                result = base_tensor.to(torch_dtype(out_dtype))
                reused += 1
            entries[name] = obj.TreeEntry(put_tensor(repo.objects, result), dtype_name(result.dtype),
                                          tuple(result.shape))
        done += _nbytes(entry)
        if progress:
            progress(done, total, name)
        if emit:
            yield name, result
    weights = repo.put(obj.Tree(entries))
    label = want or (out_dtypes.pop() if len(out_dtypes) == 1 else "mixed")
    build_id = repo.put(obj.Build(recipe_id, p.base_id, weights, label))
    seconds = time.perf_counter() - started
    row = build_row(repo, build_id, seconds)
    repo.db.write(lambda session: session.merge(row))
    repo.remember_verified()
    return BuildResult(build_id, recipe_id, weights, label, False, seconds, merged, reused)


# How many tensors ahead of the merge the kernel is asked to read (posix_fadvise WILLNEED).
_PREFETCH_TENSORS = 2


def entering_window(names: list[str], position: int) -> list[str]:
    """The tensors to announce for reading when ``names[position]`` is being worked on.

    Keeps the next _PREFETCH_TENSORS tensors' files on their way into the page
    cache, announcing each one once: all of the window at the start, then the
    one that enters it.
    """
    first = position + 1 if position == 0 else position + _PREFETCH_TENSORS
    return names[first : position + 1 + _PREFETCH_TENSORS]


def _blobs_read(p: _Plan, name: str, want: str | None, emit: bool) -> list[str]:
    """The blobs the merge of one tensor reads (a kept base blob only when it is emitted or cast)."""
    entry = p.tree.entries[name]
    if name not in p.touched:
        return [] if (want or entry.dtype) == entry.dtype and not emit else [entry.blob]
    blobs = [entry.blob]
    for index in p.touched[name]:
        vector = p.vectors[index][1]
        if name in vector.factors:
            blobs += [vector.factors[name].A, vector.factors[name].B]
        else:
            blobs.append(vector.deltas.get(name) or vector.finetuned[name])
    return blobs


def _nbytes(entry: obj.TreeEntry) -> int:
    from persona.store.codec import DTYPE_SIZES

    numel = 1
    for d in entry.shape:
        numel *= d
    return numel * DTYPE_SIZES[entry.dtype]


def _global_thresholds(repo: Repository, p: _Plan, verify: bool, workspace):
    """One magnitude cut-off per vector over the whole model, by streaming passes (no flattening)."""
    from persona.merge.select import GlobalTopK

    selector = GlobalTopK(workspace)
    while selector.needs_pass:
        for name in sorted(p.touched):
            selector.observe(name, _terms(repo, p, name, verify))
        selector.end_pass()
    return selector.result()
