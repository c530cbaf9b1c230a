"""Helpers for store tests: a repository with a tiny fake base and vectors.

Built straight from tensors (no model files), so history, fsck and gc tests run
in milliseconds and never depend on the tensorio readers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from persona.porcelain.models import store_vector
from persona.repo import Repository
from persona.store import objects as obj
from persona.store.tensors import put_tensor


def fake_base(repo: Repository, name: str = "toy", seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "model.layers.0.mlp.weight": torch.randn(4, 3, generator=generator),
        "model.layers.0.norm.weight": torch.ones(3),
        "model.embed_tokens.weight": torch.randn(5, 3, generator=generator),
    }
    entries = {n: obj.TreeEntry(put_tensor(repo.objects, t), "F32", tuple(t.shape)) for n, t in tensors.items()}
    tree = repo.put(obj.Tree(entries))
    config = repo.put_file(b'{"architectures": ["ToyForCausalLM"]}')
    base_id = repo.put(obj.Base(tree, {"config.json": config}, "ToyForCausalLM", {"kind": "test", "name": name}))
    repo.refs.update(f"refs/bases/{name}", base_id, expected=None, message="test base")
    return base_id


def fake_vector(repo: Repository, name: str, base_id: str, seed: int) -> str:
    generator = torch.Generator().manual_seed(100 + seed)
    delta = put_tensor(repo.objects, torch.randn(4, 3, generator=generator) * 0.1)
    vector = obj.Vector("dense", base_id, {"model.layers.0.mlp.weight": delta}, {}, {"source": "test",
                                                                                    "seed": seed})
    return store_vector(repo, name, vector, force=True, message="test vector").id


def write_recipe(path: Path, vectors: list[tuple[str, float]], method: str = "ties", base: str = "toy",
                 **extra) -> Path:
    data = {"base": base, "method": method, "lambda": 1.0, "density": 0.5, "seed": 0,
            "vectors": [{"name": n, "alpha": a} for n, a in vectors], **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def toy_repo(root: Path) -> Repository:
    repo, _ = Repository.init(root / "store")
    base_id = fake_base(repo)
    for i, name in enumerate(("listening", "suggesting", "warmth")):
        fake_vector(repo, name, base_id, i)
    return repo
