"""Bases and vectors: import, list, show.

Imports stream one tensor at a time from the source into blobs, so a model
larger than RAM imports, and tensors already in the store (shared with another
base, or unchanged by a fine-tune) cost nothing. The ref naming the new base or
vector is written last: a crash mid-import leaves only unreferenced blobs that
gc reclaims.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.errors import Conflict, Incompatible, InvalidInput, NotFound
from persona.repo import Repository
from persona.store import objects as obj
from persona.store.refs import NAMESPACES, validate_name

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, tensor name)


@dataclass
class BaseInfo:
    name: str
    id: str
    architecture: str
    parameters: int
    tensors: int
    files: list[str]
    source: dict[str, Any]
    tie_word_embeddings: bool

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class VectorInfo:
    name: str
    id: str
    kind: str
    base: str
    tensors: int
    parameters: int
    provenance: dict[str, Any]
    svd_errors: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


# -- sources -------------------------------------------------------------------

def open_source(spec: str, allow_pickle: bool = False):
    """A ModelSource for ``smollm2``, an HF directory or a .gguf file."""
    path = Path(spec)
    if spec == "smollm2" and not path.exists():
        from persona.tensorio import smollm2
        from persona.tensorio.gguf_reader import read_gguf

        return read_gguf(smollm2.gguf_path()), {"kind": "smollm2", "name": smollm2.gguf_path().name}
    if not path.exists():
        raise NotFound(f"no such model: {spec}", "give `smollm2`, a Hugging Face model directory or a .gguf file")
    if path.is_dir():
        from persona.tensorio.hf_dir import open_model_dir

        return open_model_dir(path, allow_pickle=allow_pickle), {"kind": "hf", "name": path.name}
    if path.suffix.lower() == ".gguf":
        from persona.tensorio.gguf_reader import read_gguf

        return read_gguf(path), {"kind": "gguf", "name": path.name}
    raise InvalidInput(f"{spec} is neither a model directory nor a .gguf file",
                       "give a Hugging Face model directory (config.json + safetensors) or a .gguf file")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _set_name(repo: Repository, namespace: str, name: str, oid: str, force: bool, message: str) -> None:
    ref = f"{NAMESPACES[namespace]}/{name}"
    current = repo.refs.read_raw(ref)
    if current == oid:
        return
    if current is not None and not force:
        raise Conflict(f"a {namespace} named {name!r} already exists ({current[:12]})",
                       f"choose another name, or pass --force to point {name!r} at the new one "
                       "(the old one stays in the reflog)")
    repo.refs.update(ref, oid, expected=current, message=message)


def import_base(repo: Repository, spec: str, name: str | None = None, allow_pickle: bool = False,
                force: bool = False, progress: Progress | None = None) -> BaseInfo:
    from persona.porcelain.index import base_row
    from persona.store.tensors import dtype_name, put_tensor

    source, origin = open_source(spec, allow_pickle)
    name = validate_name(name or (spec if spec == "smollm2" else Path(spec).stem), "base name")
    ref = f"{NAMESPACES['base']}/{name}"
    if repo.refs.read_raw(ref) is not None and not force:
        raise Conflict(f"a base named {name!r} already exists",
                       "choose another name with --name, or pass --force")
    if source.path is not None and source.path.is_file():
        origin["sha256"] = _file_sha256(source.path)
    total = source.total_bytes
    done = 0
    entries: dict[str, obj.TreeEntry] = {}
    for tensor_name, tensor in source.iter_tensors():
        blob = put_tensor(repo.objects, tensor)
        entries[tensor_name] = obj.TreeEntry(blob, dtype_name(tensor.dtype), tuple(tensor.shape))
        done += tensor.numel() * tensor.element_size()
        if progress:
            progress(done, total, tensor_name)
    files = {fname: repo.put_file(data) for fname, data in sorted(source.files.items())}
    tree_id = repo.put(obj.Tree(entries))
    base = obj.Base(tree_id, files, source.architecture, origin, bool(source.tie_word_embeddings))
    base_id = repo.put(base)
    # Index row before the ref (as commit does): a kill in between leaves a
    # harmless row for an unnamed object, never a named base missing from the index.
    row = base_row(repo, base_id, name)
    repo.db.write(lambda session: session.merge(row))
    _set_name(repo, "base", name, base_id, force, f"base import: {spec}")
    repo.remember_verified()
    return show_base(repo, name)


def show_base(repo: Repository, name_or_id: str) -> BaseInfo:
    oid = repo.base_id(name_or_id)
    base = repo.get(oid, obj.Base)
    tree = repo.get(base.weights, obj.Tree)
    names = [n for n, v in repo.refs.list("base").items() if v == oid]
    return BaseInfo(names[0] if names else name_or_id, oid, base.architecture,
                    sum(math.prod(e.shape) for e in tree.entries.values()), len(tree.entries),
                    sorted(base.files), base.source, base.tie_word_embeddings)


def list_bases(repo: Repository) -> list[BaseInfo]:
    return [show_base(repo, name) for name in repo.refs.list("base")]


def default_base(repo: Repository, name: str | None) -> str:
    """The base a command means: --base, else the only one in the store."""
    if name:
        return repo.base_id(name)
    bases = repo.refs.list("base")
    if len(bases) == 1:
        return next(iter(bases.values()))
    if not bases:
        raise NotFound("the store has no base model", "import one first: persona base import smollm2")
    raise InvalidInput(f"the store has {len(bases)} bases ({', '.join(bases)})", "say which with --base NAME")


# -- vectors -------------------------------------------------------------------

def _base_tree(repo: Repository, base_id: str) -> obj.Tree:
    return repo.get(repo.get(base_id, obj.Base).weights, obj.Tree)


def import_adapter(repo: Repository, name: str, adapter_dir: Path, base: str | None = None,
                   allow_pickle: bool = False, force: bool = False) -> VectorInfo:
    """A PEFT LoRA adapter, stored as its factors (delta = scale * B @ A)."""
    from persona.store.tensors import put_tensor
    from persona.tensorio.peft_reader import read_lora_adapter
    from persona.tensorio.source import assert_finite

    validate_name(name, "vector name")
    base_id = default_base(repo, base)
    tree = _base_tree(repo, base_id)
    adapter = read_lora_adapter(Path(adapter_dir), allow_pickle=allow_pickle)
    factors: dict[str, obj.LoraFactorRef] = {}
    for target, factor in sorted(adapter.factors.items()):
        entry = tree.entries.get(target)
        if entry is None:
            raise Incompatible(f"adapter {adapter_dir} changes {target}, which base {base_id[:12]} does not have",
                               "import it against the base it was trained on (--base)")
        shape = (factor.B.shape[0], factor.A.shape[1])
        if tuple(entry.shape) != shape:
            raise Incompatible(f"adapter {adapter_dir}: {target} is {list(shape)} but the base's is "
                               f"{list(entry.shape)}", "import it against the base it was trained on (--base)")
        assert_finite(f"{target} lora_A", factor.A, str(adapter_dir))
        assert_finite(f"{target} lora_B", factor.B, str(adapter_dir))
        factors[target] = obj.LoraFactorRef(put_tensor(repo.objects, factor.A.contiguous()),
                                            put_tensor(repo.objects, factor.B.contiguous()), float(factor.scale))
    if not factors:
        raise InvalidInput(f"adapter {adapter_dir} has no LoRA weights", "check the adapter directory")
    provenance = {"source": "peft-adapter", "adapter_sha256": _dir_digest(Path(adapter_dir)),
                  "peft_config": adapter.config}
    vector = obj.Vector("lora", base_id, {}, factors, provenance)
    return _finish_vector(repo, name, vector, force, f"vector import: {adapter_dir}")


def _dir_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(_file_sha256(file).encode())
    return digest.hexdigest()


def import_checkpoint(repo: Repository, name: str, checkpoint: Path, base: str | None = None,
                      rank: int | None = None, allow_pickle: bool = False, force: bool = False,
                      progress: Progress | None = None) -> VectorInfo:
    """The tensors that differ from the base: W_ft itself (the merge forms W_ft - W_base exactly,
    reading the checkpoint's own bytes, half a float32 delta's for bf16), or with ``rank`` a
    truncated SVD of each matrix's delta."""
    import torch

    from persona.store.tensors import load_tensor, put_tensor
    from persona.tensorio.hf_dir import open_model_dir

    validate_name(name, "vector name")
    if rank is not None and rank < 1:
        raise InvalidInput(f"--rank must be at least 1, got {rank}", "e.g. --rank 16")
    base_id = default_base(repo, base)
    tree = _base_tree(repo, base_id)
    source = open_model_dir(Path(checkpoint), allow_pickle=allow_pickle)
    listing = {t.name: t for t in source.tensors}
    missing = sorted(set(tree.entries) - set(listing))
    extra = sorted(set(listing) - set(tree.entries))
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the base does not"
        raise Incompatible(f"checkpoint {checkpoint} {which} ({len(missing)} missing, {len(extra)} extra)",
                           "a checkpoint vector needs the same architecture as its base (--base)")
    for tname, info in listing.items():
        if tuple(info.shape) != tuple(tree.entries[tname].shape):
            raise Incompatible(f"checkpoint {checkpoint}: {tname} is {list(info.shape)}, base has "
                               f"{list(tree.entries[tname].shape)}", "use the base it was fine-tuned from")
    finetuned: dict[str, str] = {}
    factors: dict[str, obj.LoraFactorRef] = {}
    errors: dict[str, float] = {}
    total = source.total_bytes
    done = 0
    for tname, tensor in source.iter_tensors():
        base_tensor = load_tensor(repo.objects, tree.entries[tname].blob)
        done += tensor.numel() * tensor.element_size()
        if progress:
            progress(done, total, tname)
        same_dtype = tensor.dtype == base_tensor.dtype
        if same_dtype and torch.equal(tensor, base_tensor):
            continue
        if not tensor.is_floating_point():
            raise Incompatible(f"checkpoint {checkpoint}: {tname} is {tensor.dtype} and differs from the base",
                               "only float tensors can form a task vector")
        svd = rank is not None and tensor.dim() == 2 and rank < min(tensor.shape)
        if svd or not same_dtype:  # the float32 delta is needed (same dtype: torch.equal said it differs)
            delta = tensor.to(torch.float32) - base_tensor.to(torch.float32)
            if not bool(delta.any()):
                continue
        if svd:
            u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
            b = (u[:, :rank] * s[:rank]).to(torch.float32).contiguous()
            a = vh[:rank].to(torch.float32).contiguous()
            errors[tname] = float(torch.linalg.norm(delta - b @ a) / torch.linalg.norm(delta))
            factors[tname] = obj.LoraFactorRef(put_tensor(repo.objects, a), put_tensor(repo.objects, b), 1.0)
        else:
            finetuned[tname] = put_tensor(repo.objects, tensor.contiguous())
    if not finetuned and not factors:
        raise InvalidInput(f"checkpoint {checkpoint} is identical to base {base_id[:12]}",
                           "nothing to store: did you pass the base itself?")
    provenance: dict[str, Any] = {"source": "checkpoint", "checkpoint": Path(checkpoint).name}
    if rank is not None:
        provenance["svd_rank"] = rank
        provenance["svd_relative_error"] = errors
    kind = "lowrank" if factors else "dense"
    vector = obj.Vector(kind, base_id, {}, factors, provenance, finetuned=finetuned)
    info = _finish_vector(repo, name, vector, force, f"vector import: {checkpoint}")
    info.svd_errors = errors
    return info


def store_vector(repo: Repository, name: str, vector: obj.Vector, force: bool, message: str) -> VectorInfo:
    """Used by training too: store the object, name it, index it."""
    return _finish_vector(repo, name, vector, force, message)


def _finish_vector(repo: Repository, name: str, vector: obj.Vector, force: bool, message: str) -> VectorInfo:
    from persona.porcelain.index import vector_row

    oid = repo.put(vector)
    row = vector_row(repo, oid, name)
    repo.db.write(lambda session: session.merge(row))
    _set_name(repo, "vector", name, oid, force, message)
    repo.remember_verified()
    return show_vector(repo, name)


def show_vector(repo: Repository, name_or_id: str) -> VectorInfo:
    from sqlalchemy import select

    from persona.db.models import TrainingRunRow
    from persona.porcelain.index import vector_parameters

    oid = repo.vector_id(name_or_id)
    vector = repo.get(oid, obj.Vector)
    names = [n for n, v in repo.refs.list("vector").items() if v == oid]

    def run(session) -> dict[str, Any] | None:
        row = session.execute(select(TrainingRunRow).where(TrainingRunRow.vector_id == oid)
                              .order_by(TrainingRunRow.created.desc())).scalars().first()
        if row is None:
            return None
        return {"data_sha256": row.data_sha256, "hyperparameters": row.hyperparameters, "losses": row.losses,
                "wall_seconds": row.wall_seconds, "versions": row.versions, "status": row.status}

    return VectorInfo(names[0] if names else name_or_id, oid, vector.vector_kind, vector.base,
                      len(vector.touched()), vector_parameters(repo, vector), vector.provenance,
                      dict(vector.provenance.get("svd_relative_error", {})), training=repo.db.read(run))


def list_vectors(repo: Repository) -> list[VectorInfo]:
    return [show_vector(repo, name) for name in repo.refs.list("vector")]
