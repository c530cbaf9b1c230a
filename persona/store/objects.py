"""The structured object kinds and their canonical payloads.

Each kind is a frozen dataclass with ``to_payload`` (canonical JSON bytes, see
persona.canonical) and ``from_payload``. Only facts that are the same in every
process go into a payload: ids, names, numbers, hyper-parameters. Wall-clock
durations and loss curves live in the database, so training twice on the same
data with the same seed yields the same vector id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from persona import canonical
from persona.errors import CorruptObject

FORMAT = 1


def _load(kind: str, payload: bytes) -> dict[str, Any]:
    try:
        data = canonical.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptObject(f"{kind} object is not valid JSON", "run `persona fsck`") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptObject(f"{kind} object has an unknown format", "upgrade persona")
    return data


def _malformed(kind: str) -> CorruptObject:
    return CorruptObject(f"{kind} object is malformed", "run `persona fsck`")


def _need(ok: bool, kind: str) -> None:
    """Objects are read back from disk: a field of the wrong type is damage, not a crash."""
    if not ok:
        raise _malformed(kind)


def _is_oid(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class TreeEntry:
    blob: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Tree:
    """Tensor name -> blob: the weights of a base or of a build."""

    kind: ClassVar[str] = "tree"
    entries: dict[str, TreeEntry]

    def to_payload(self) -> bytes:
        return canonical.dumps({
            "format": FORMAT,
            "entries": {n: {"blob": e.blob, "dtype": e.dtype, "shape": list(e.shape)}
                        for n, e in self.entries.items()},
        })

    @classmethod
    def from_payload(cls, payload: bytes) -> Tree:
        data = _load("tree", payload)
        entries = data.get("entries")
        _need(isinstance(entries, dict), "tree")
        out = {}
        for name, e in entries.items():
            _need(isinstance(e, dict) and isinstance(e.get("blob"), str) and isinstance(e.get("dtype"), str)
                  and isinstance(e.get("shape"), list)
                  and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"]), "tree")
            out[name] = TreeEntry(e["blob"], e["dtype"], tuple(e["shape"]))
        return cls(out)

    def blob_ids(self) -> list[str]:
        return [e.blob for e in self.entries.values()]


@dataclass(frozen=True)
class Base:
    """An imported base model: its weights, and the files a build needs to be loadable."""

    kind: ClassVar[str] = "base"
    weights: str  # tree id
    files: dict[str, str]  # file name (config.json, tokenizer.json, ...) -> file object id
    architecture: str
    source: dict[str, Any]  # {"kind": "gguf"|"hf"|"smollm2", "name": ..., "sha256": ...}
    tie_word_embeddings: bool = False

    def to_payload(self) -> bytes:
        return canonical.dumps({"format": FORMAT, **asdict(self)})

    @classmethod
    def from_payload(cls, payload: bytes) -> Base:
        data = _load("base", payload)
        data.pop("format")
        try:
            base = cls(**data)
        except TypeError as exc:
            raise _malformed("base") from exc
        _need(isinstance(base.weights, str) and _is_str_map(base.files) and isinstance(base.architecture, str)
              and isinstance(base.source, dict) and isinstance(base.tie_word_embeddings, bool), "base")
        return base

    def referenced_ids(self) -> list[str]:
        return [self.weights, *self.files.values()]


@dataclass(frozen=True)
class LoraFactorRef:
    A: str  # blob, r x in
    B: str  # blob, out x r
    scale: float


#: Provenance key of a trained vector's training prompts (a ``file`` object id), kept for AER's overlap check.
PROMPTS_FILE = "prompts_file"


@dataclass(frozen=True)
class Vector:
    """A behaviour: the change it makes to a base, pinned to that base's id.

    ``deltas`` holds dense W_ft - W_base tensors; ``finetuned`` holds W_ft itself
    for dense imports (the delta is W_ft - W_base, formed in float32 when merging:
    exact for bf16/fp16 weights, and half the bytes of a float32 delta);
    ``factors`` holds low-rank ones (LoRA, or a truncated SVD of a dense delta)
    as delta = scale * B @ A. A vector may mix them (e.g. SVD for matrices,
    dense for norms). ``finetuned`` is left out of the payload when empty, so
    vectors without it keep the ids they always had.
    """

    kind: ClassVar[str] = "vector"
    vector_kind: str  # lora | dense | lowrank
    base: str  # base object id
    deltas: dict[str, str] = field(default_factory=dict)  # tensor name -> blob
    factors: dict[str, LoraFactorRef] = field(default_factory=dict)  # tensor name -> factors
    provenance: dict[str, Any] = field(default_factory=dict)
    finetuned: dict[str, str] = field(default_factory=dict)  # tensor name -> blob of W_ft

    def to_payload(self) -> bytes:
        data: dict[str, Any] = {
            "format": FORMAT,
            "vector_kind": self.vector_kind,
            "base": self.base,
            "deltas": self.deltas,
            "factors": {n: {"A": f.A, "B": f.B, "scale": f.scale} for n, f in self.factors.items()},
            "provenance": self.provenance,
        }
        if self.finetuned:
            data["finetuned"] = self.finetuned
        return canonical.dumps(data)

    @classmethod
    def from_payload(cls, payload: bytes) -> Vector:
        data = _load("vector", payload)
        factors = data.get("factors")
        _need(isinstance(data.get("vector_kind"), str) and isinstance(data.get("base"), str)
              and _is_str_map(data.get("deltas")) and isinstance(factors, dict)
              and _is_str_map(data.get("finetuned", {}))
              and isinstance(data.get("provenance", {}), dict), "vector")
        finetuned = dict(data.get("finetuned", {}))
        _need(not (set(finetuned) & (set(data["deltas"]) | set(factors))), "vector")
        for f in factors.values():
            _need(isinstance(f, dict) and isinstance(f.get("A"), str) and isinstance(f.get("B"), str)
                  and _is_number(f.get("scale")), "vector")
        return cls(
            vector_kind=data["vector_kind"], base=data["base"], deltas=dict(data["deltas"]),
            factors={n: LoraFactorRef(f["A"], f["B"], float(f["scale"])) for n, f in factors.items()},
            provenance=data.get("provenance", {}), finetuned=finetuned,
        )

    def touched(self) -> list[str]:
        return sorted({*self.deltas, *self.finetuned, *self.factors})

    def referenced_ids(self) -> list[str]:
        ids = [self.base, *self.deltas.values(), *self.finetuned.values()]
        for factor in self.factors.values():
            ids += [factor.A, factor.B]
        prompts = self.provenance.get(PROMPTS_FILE)
        if isinstance(prompts, str) and _is_oid(prompts):
            ids.append(prompts)  # the prompts a distilled vector was trained on (a file object)
        return ids


@dataclass(frozen=True)
class RecipeObject:
    """A validated recipe with every name resolved to the id it meant at commit time."""

    kind: ClassVar[str] = "recipe"
    body: dict[str, Any]

    def to_payload(self) -> bytes:
        return canonical.dumps({"format": FORMAT, **self.body})

    @classmethod
    def from_payload(cls, payload: bytes) -> RecipeObject:
        data = _load("recipe", payload)
        data.pop("format")
        base, vectors = data.get("base"), data.get("vectors")
        _need(isinstance(base, dict) and isinstance(base.get("id"), str) and isinstance(vectors, list)
              and all(isinstance(v, dict) and isinstance(v.get("id"), str) for v in vectors), "recipe")
        return cls(data)

    def referenced_ids(self) -> list[str]:
        return [self.body["base"]["id"], *(v["id"] for v in self.body["vectors"])]


@dataclass(frozen=True)
class Commit:
    kind: ClassVar[str] = "commit"
    recipe: str
    parents: tuple[str, ...]
    author: str
    time: int  # seconds since the epoch, UTC
    message: str

    def to_payload(self) -> bytes:
        return canonical.dumps({
            "format": FORMAT, "recipe": self.recipe, "parents": list(self.parents),
            "author": self.author, "time": self.time, "message": self.message,
        })

    @classmethod
    def from_payload(cls, payload: bytes) -> Commit:
        data = _load("commit", payload)
        parents = data.get("parents")
        _need(isinstance(data.get("recipe"), str) and isinstance(parents, list)
              and all(isinstance(p, str) for p in parents) and isinstance(data.get("author"), str)
              and isinstance(data.get("time"), int) and not isinstance(data.get("time"), bool)
              and isinstance(data.get("message"), str), "commit")
        return cls(data["recipe"], tuple(parents), data["author"], data["time"], data["message"])

    def referenced_ids(self) -> list[str]:
        return [self.recipe, *self.parents]


@dataclass(frozen=True)
class Build:
    """A recipe's merged weights: a cache entry that makes rebuilds free."""

    kind: ClassVar[str] = "build"
    recipe: str
    base: str
    weights: str  # tree id
    dtype: str

    def to_payload(self) -> bytes:
        return canonical.dumps({"format": FORMAT, **asdict(self)})

    @classmethod
    def from_payload(cls, payload: bytes) -> Build:
        data = _load("build", payload)
        data.pop("format")
        try:
            build = cls(**data)
        except TypeError as exc:
            raise _malformed("build") from exc
        _need(all(isinstance(v, str) for v in (build.recipe, build.base, build.weights, build.dtype)), "build")
        return build

    def referenced_ids(self) -> list[str]:
        return [self.recipe, self.base, self.weights]


STRUCTURED = {cls.kind: cls for cls in (Tree, Base, Vector, RecipeObject, Commit, Build)}


def decode(kind: str, payload: bytes) -> Any:
    """Decode any structured object (``file`` and ``blob`` stay raw)."""
    if kind in STRUCTURED:
        return STRUCTURED[kind].from_payload(payload)
    return payload


def referenced_ids(kind: str, payload: bytes) -> list[str]:
    """Ids an object points at: the edges fsck and gc walk."""
    obj = decode(kind, payload)
    if kind == "tree":
        return obj.blob_ids()
    if kind in ("base", "vector", "recipe", "commit", "build"):
        return obj.referenced_ids()
    return []
