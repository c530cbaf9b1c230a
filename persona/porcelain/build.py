"""merge and build: a recipe committed and computed, then written as a loadable model.

``merge`` = commit the recipe + compute its weights into the store (a build
object). ``build`` writes a build out as a Hugging Face directory (or a GGUF):
the base's config and tokenizer files, the merged tensors in shards, and a model
card with the recipe. The directory appears only when complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from persona import recipes
from persona.errors import InvalidInput
from persona.porcelain import history
from persona.porcelain.engine import (
    BuildResult,
    build_recipe,
    cached_build,
    entering_window,
    output_dtype,
)
from persona.repo import Repository
from persona.store import objects as obj
from persona.store import revparse

TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
Progress = Callable[[int, int, str], None]


@dataclass
class MergeResult:
    commit: history.CommitInfo
    build: BuildResult

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "build": self.build.to_json()}


def merge_recipe(repo: Repository, recipe: obj.RecipeObject, message: str,
                 progress: Progress | None = None) -> MergeResult:
    """Compute first, then commit: a recipe that cannot be merged never enters history."""
    recipe_id = repo.put(recipe)
    result = build_recipe(repo, recipe_id, progress=progress)
    info = history.commit_recipe(repo, recipe, message)
    return MergeResult(info, result)


def edit_head_recipe(repo: Repository, edits: list[str], drop: list[str], base: str | None,
                     method: str | None, density: float | None, lambda_: float | None,
                     seed: int | None) -> obj.RecipeObject:
    """The current recipe with ``name:alpha[:density]`` edits applied (a new one if none)."""
    head = repo.head()
    if head is not None:
        data = recipes.to_yaml_dict(repo.recipe(repo.commit(head).recipe).body)
    elif base is None and len(repo.refs.list("base")) != 1:
        raise InvalidInput("there is no current recipe to edit", "pass --base NAME to start one")
    else:
        data = {"base": base or next(iter(repo.refs.list("base"))), "method": "task_arithmetic",
                "vectors": []}
    if base:
        data["base"] = base
    for key, value in (("method", method), ("density", density), ("lambda", lambda_), ("seed", seed)):
        if value is not None:
            data[key] = value
    vectors = {v["name"]: dict(v) for v in data.get("vectors", [])}
    for name in drop:
        if name not in vectors:
            raise InvalidInput(f"--drop {name}: the recipe has no vector {name!r}",
                               f"vectors: {', '.join(vectors) or 'none'}")
        del vectors[name]
    for edit in edits:
        match = re.fullmatch(r"([^:]+):([^:]+)(?::([^:]+))?", edit)
        if not match:
            raise InvalidInput(f"cannot read {edit!r}", "write NAME:ALPHA or NAME:ALPHA:DENSITY, e.g. listening:1.0")
        name, alpha, vdensity = match.groups()
        try:
            entry = {"name": name, "alpha": float(alpha)}
            if vdensity is not None:
                entry["density"] = float(vdensity)
        except ValueError as exc:
            raise InvalidInput(f"{edit!r}: alpha and density must be numbers", "e.g. suggesting:-0.5") from exc
        if name in vectors and vdensity is None and "density" in vectors[name] and density is None:
            entry["density"] = vectors[name]["density"]
        vectors[name] = entry
    if density is not None:
        # Stored recipes keep every vector's density explicitly, so a new default
        # applies to all vectors except those given a density in this command.
        explicit = {m.split(":")[0] for m in edits if m.count(":") == 2}
        for entry in vectors.values():
            if entry["name"] not in explicit:
                entry["density"] = density
    data["vectors"] = list(vectors.values())
    return recipes.resolve(repo, recipes.parse(data, "command line recipe"))


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise InvalidInput(f"cannot read size {text!r}", "e.g. 2GB, 500MB")
    unit = (match[2] or "B").upper().rstrip("B").rstrip("I")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[unit]
    if "I" in (match[2] or "").upper():
        scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    size = int(float(match[1]) * scale)
    if size < 1024:
        raise InvalidInput(f"shard size {text} is too small", "use at least 1KB (2GB is usual)")
    return size


@dataclass
class BuildOutput:
    path: str
    format: str
    commit: str
    build: BuildResult

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "commit": self.commit, "build": self.build.to_json()}


def _merge_and_write(repo: Repository, commit_id: str, recipe_id: str, body: dict[str, Any], out: Path,
                     dtype: str | None, max_shard: int, force: bool, progress: Progress | None) -> BuildOutput:
    """A recipe not merged yet: merge it into the store and write the directory in one pass.

    Each merged tensor goes to its blob and to the shard being filled while it is
    in memory, so the inputs are read once and the merged weights are never read
    back. The store keeps the build as usual (the next build of it is a copy).
    """
    from persona.porcelain.engine import merge_stream
    from persona.tensorio.hf_writer import write_model_dir

    base = repo.get(body["base"]["id"], obj.Base)
    want = output_dtype(repo, recipe_id, dtype)
    tree = repo.get(base.weights, obj.Tree)
    dtypes = {entry.dtype for entry in tree.entries.values()}
    label = want or (next(iter(dtypes)) if len(dtypes) == 1 else "mixed")  # as merge_stream labels it
    files = _files_for(repo, base, label)
    files["README.md"] = model_card(repo, commit_id, body, label).encode()
    outcome: dict[str, BuildResult] = {}

    def tensors():
        outcome["result"] = yield from merge_stream(repo, recipe_id, dtype, progress=progress)

    path = write_model_dir(out, files, tensors(), max_shard_bytes=max_shard, force=force)
    return BuildOutput(str(path), "hf", commit_id, outcome["result"])


def model_card(repo: Repository, commit_id: str, body: dict[str, Any], dtype: str) -> str:
    info = history.show(repo, commit_id)
    aer = f"{info.aer:.4f}" if info.aer is not None else "not measured (run `persona aer`)"
    recipe_yaml = yaml.safe_dump(recipes.to_yaml_dict(body), sort_keys=False).rstrip()
    vectors = "\n".join(f"| {v['name']} | `{v['id'][:12]}` | {v['alpha']:+g} | {v['density']:g} |"
                        for v in body["vectors"])
    return f"""---
library_name: transformers
tags: [persona, merge, {body['method']}]
---
# {body['base']['name']} + persona recipe `{commit_id[:12]}`

Built by [persona](https://pypi.org/project/persona/) from commit `{commit_id}`:
"{info.message}".

- Merge method: `{body['method']}` (lambda {body['lambda']:g}, density {body['density']:g}, seed {body['seed']})
- Base: `{body['base']['name']}` (`{body['base']['id'][:12]}`)
- Output dtype: {dtype}
- Alignment Efficiency Ratio (AER): {aer}

| vector | id | alpha | density |
|---|---|---|---|
{vectors}

## Recipe

```yaml
{recipe_yaml}
```
"""


def _files_for(repo: Repository, base: obj.Base, out_dtype: str) -> dict[str, bytes]:
    files = {name: repo.get_file(oid) for name, oid in base.files.items()}
    if "config.json" in files and out_dtype in TORCH_NAMES:
        config = json.loads(files["config.json"])
        config["torch_dtype"] = TORCH_NAMES[out_dtype]
        if "dtype" in config:
            config["dtype"] = TORCH_NAMES[out_dtype]
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return files


def _tensors(repo: Repository, tree: obj.Tree) -> Iterator[tuple[str, Any]]:
    from persona.store.tensors import load_tensor

    names = sorted(tree.entries)
    for position, name in enumerate(names):
        for ahead in entering_window(names, position):  # read ahead while this one is written out
            repo.objects.prefetch(tree.entries[ahead].blob)
        # verify=True: a corrupt blob must never become wrong weights in a model
        yield name, load_tensor(repo.objects, tree.entries[name].blob, verify=True)


def build(repo: Repository, rev: str, out: Path, dtype: str | None = None, shard_size: str = "2GB",
          fmt: str = "hf", outtype: str = "f16", force: bool = False,
          progress: Progress | None = None) -> BuildOutput:
    if fmt not in ("hf", "gguf"):
        raise InvalidInput(f"unknown format {fmt!r}", "use --format hf or --format gguf")
    if dtype is not None and dtype not in recipes.DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}", f"use one of {', '.join(recipes.DTYPES)}")
    max_shard = parse_size(shard_size)
    commit_id = revparse.resolve(repo, rev)
    recipe_id = repo.commit(commit_id).recipe
    body = repo.recipe(recipe_id).body
    cached = cached_build(repo, recipe_id, dtype)
    if cached is None and fmt == "hf":
        return _merge_and_write(repo, commit_id, recipe_id, body, Path(out), dtype, max_shard, force, progress)
    result = cached or build_recipe(repo, recipe_id, dtype, progress=progress)
    build_obj = repo.get(result.id, obj.Build)
    base = repo.get(build_obj.base, obj.Base)
    tree = repo.get(build_obj.weights, obj.Tree)
    files = _files_for(repo, base, result.dtype)
    files["README.md"] = model_card(repo, commit_id, body, result.dtype).encode()
    if fmt == "gguf":
        from persona.porcelain.materialise import tree_source
        from persona.tensorio.gguf_writer import write_gguf

        source = tree_source(repo, tree, files, base.architecture, base.tie_word_embeddings)
        path = write_gguf(Path(out), source, outtype=outtype, force=force)
    else:
        from persona.tensorio.hf_writer import write_model_dir

        path = write_model_dir(Path(out), files, _tensors(repo, tree), max_shard_bytes=max_shard, force=force)
    repo.remember_verified()
    return BuildOutput(str(path), fmt, commit_id, result)


def export_base(repo: Repository, name: str, out: Path, force: bool = False) -> str:
    """Write an imported base back out as a Hugging Face directory (for training elsewhere)."""
    from persona.tensorio.hf_writer import write_model_dir

    base = repo.get(repo.base_id(name), obj.Base)
    tree = repo.get(base.weights, obj.Tree)
    files = {fname: repo.get_file(oid) for fname, oid in base.files.items()}
    return str(write_model_dir(Path(out), files, _tensors(repo, tree), force=force))
