"""Recipes: which vectors, with which weights, merged how.

A recipe file (YAML, DESIGN.md §4) is validated strictly, field by field, and
every name is resolved to the id it means now, so a commit pins exactly what it
merged: re-importing a vector under the same name later never changes an old
commit's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona import yamlsafe
from persona.errors import Incompatible, InvalidInput
from persona.store import objects as obj
from persona.store.refs import validate_name

if TYPE_CHECKING:
    from persona.repo import Repository

METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
DTYPES = ("float32", "float16", "bfloat16")
TOP_KEYS = {"base", "method", "lambda", "density", "seed", "dtype", "elect", "trim", "vectors"}
VECTOR_KEYS = {"name", "alpha", "density"}
MAX_WEIGHT = 100.0
MAX_VECTORS = 256


@dataclass(frozen=True)
class VectorSpec:
    name: str
    alpha: float
    density: float | None


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe as the user wrote it, validated, names not yet resolved."""

    base: str
    method: str
    lambda_: float
    density: float
    seed: int
    dtype: str | None
    elect: str
    trim: str
    vectors: tuple[VectorSpec, ...]


def _number(value: Any, field: str, source: str, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{source}: {field} must be a number, got {type(value).__name__} {value!r}",
                           f"write {field} as a plain number, e.g. {field}: 1.0")
    try:
        number = float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise InvalidInput(f"{source}: {field} is out of range", f"give {field} a plain number") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{source}: {field} is not finite ({value})", f"give {field} a finite value")
    if low is not None and (number <= low if low_open else number < low):
        raise InvalidInput(f"{source}: {field}={number} is out of range",
                           f"{field} must be {'>' if low_open else '>='} {low}" +
                           (f" and <= {high}" if high is not None else ""))
    if high is not None and number > high:
        raise InvalidInput(f"{source}: {field}={number} is out of range", f"{field} must be <= {high}")
    return number


def _density(value: Any, field: str, source: str) -> float:
    number = _number(value, field, source)
    if not 0.0 < number <= 1.0:
        raise InvalidInput(f"{source}: {field}={number} is outside (0, 1]",
                           "density is the fraction of entries kept: use e.g. 0.2")
    return number


def parse(data: Any, source: str = "recipe") -> RecipeSpec:
    """Validate a recipe mapping (from YAML) field by field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a recipe must be a mapping with base, method and vectors",
                           "see recipes/timmy.yaml for an example")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        raise InvalidInput(f"{source}: unknown key {unknown[0]!r}",
                           f"allowed keys: {', '.join(sorted(TOP_KEYS))}")
    if "base" not in data or not isinstance(data["base"], str) or not data["base"]:
        raise InvalidInput(f"{source}: base is missing or not a name", "add e.g. base: smollm2")
    method = data.get("method", "task_arithmetic")
    if method not in METHODS:
        raise InvalidInput(f"{source}: unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    lambda_ = _number(data.get("lambda", 1.0), "lambda", source, -MAX_WEIGHT, MAX_WEIGHT)
    density = _density(data.get("density", 1.0), "density", source)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidInput(f"{source}: seed must be an integer in [0, 2^63), got {seed!r}", "e.g. seed: 0")
    dtype = data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInput(f"{source}: unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    elect = data.get("elect", "sum")
    if elect not in ("sum", "count"):
        raise InvalidInput(f"{source}: elect must be sum or count, got {elect!r}", "e.g. elect: sum")
    trim = data.get("trim", "tensor")
    if trim not in ("tensor", "global"):
        raise InvalidInput(f"{source}: trim must be tensor or global, got {trim!r}", "e.g. trim: tensor")
    vectors = data.get("vectors")
    if not isinstance(vectors, list) or not vectors:
        raise InvalidInput(f"{source}: the recipe selects no vector",
                           "add a list: vectors: [{name: listening, alpha: 1.0}]")
    if len(vectors) > MAX_VECTORS:
        raise InvalidInput(f"{source}: {len(vectors)} vectors is too many", f"at most {MAX_VECTORS}")
    specs: list[VectorSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(vectors):
        where = f"vectors[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{source}: {where} must be a mapping with name and alpha",
                               "e.g. - {name: listening, alpha: 1.0}")
        bad = sorted(set(map(str, item)) - VECTOR_KEYS)
        if bad:
            raise InvalidInput(f"{source}: {where} has unknown key {bad[0]!r}",
                               f"allowed keys: {', '.join(sorted(VECTOR_KEYS))}")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"{source}: {where}.name is missing", "give the vector's name")
        validate_name(name, f"{where}.name")
        if name in seen:
            raise InvalidInput(f"{source}: vector {name!r} is listed twice",
                               "list each vector once; combine the alphas")
        seen.add(name)
        alpha = _number(item.get("alpha", 1.0), f"{where}.alpha", source, -MAX_WEIGHT, MAX_WEIGHT)
        vdensity = _density(item["density"], f"{where}.density", source) if "density" in item else None
        specs.append(VectorSpec(name, alpha, vdensity))
    return RecipeSpec(data["base"], method, lambda_, density, seed, dtype, elect, trim, tuple(specs))


def load(path: Path) -> RecipeSpec:
    return parse(yamlsafe.load_file(path), str(path))


def resolve(repo: Repository, spec: RecipeSpec) -> obj.RecipeObject:
    """Pin names to ids and check every vector was made for this base."""
    base_id = repo.base_id(spec.base)
    vectors = []
    for vspec in spec.vectors:
        vector_id = repo.vector_id(vspec.name)
        vector = repo.get(vector_id, obj.Vector)
        if vector.base != base_id:
            raise Incompatible(
                f"vector {vspec.name!r} was made for base {vector.base[:12]}, not {spec.base} ({base_id[:12]})",
                "train or import the vector against this base, or change the recipe's base")
        vectors.append({"name": vspec.name, "id": vector_id, "alpha": vspec.alpha,
                        "density": vspec.density if vspec.density is not None else spec.density})
    body = {
        "base": {"name": spec.base, "id": base_id},
        "method": spec.method, "lambda": spec.lambda_, "density": spec.density, "seed": spec.seed,
        "dtype": spec.dtype, "elect": spec.elect, "trim": spec.trim, "vectors": vectors,
    }
    return obj.RecipeObject(body)


def to_yaml_dict(body: dict[str, Any]) -> dict[str, Any]:
    """The user-facing form of a stored recipe (names, not ids)."""
    out: dict[str, Any] = {"base": body["base"]["name"], "method": body["method"], "lambda": body["lambda"],
                           "density": body["density"], "seed": body["seed"]}
    if body.get("dtype"):
        out["dtype"] = body["dtype"]
    if body.get("elect", "sum") != "sum":
        out["elect"] = body["elect"]
    if body.get("trim", "tensor") != "tensor":
        out["trim"] = body["trim"]
    out["vectors"] = [{"name": v["name"], "alpha": v["alpha"], "density": v["density"]}
                      for v in body["vectors"]]
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recipe-level differences from ``a`` to ``b``."""
    params = {}
    for key in ("method", "lambda", "density", "seed", "dtype", "elect", "trim"):
        if a.get(key) != b.get(key):
            params[key] = {"from": a.get(key), "to": b.get(key)}
    if a["base"] != b["base"]:
        params["base"] = {"from": a["base"], "to": b["base"]}
    va = {v["name"]: v for v in a["vectors"]}
    vb = {v["name"]: v for v in b["vectors"]}
    changed = []
    for name in sorted(set(va) & set(vb)):
        fields = {k: {"from": va[name][k], "to": vb[name][k]}
                  for k in ("alpha", "density", "id") if va[name][k] != vb[name][k]}
        if fields:
            changed.append({"name": name, **fields})
    return {
        "params": params,
        "added": [vb[n] for n in sorted(set(vb) - set(va))],
        "removed": [va[n] for n in sorted(set(va) - set(vb))],
        "changed": changed,
    }
