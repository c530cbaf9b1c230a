"""Turn stored weights back into things other libraries consume.

- ``tree_source``: a ModelSource over a stored tree (for the HF and GGUF writers),
  reading each blob through its memory map and verifying its hash as it goes.
- ``load_causal_lm``: a transformers model + tokenizer built straight from the
  store, without writing a model directory: the config and tokenizer files go to
  a small cache folder, the weights are assigned from memory-mapped blobs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.fsutil import atomic_write_bytes
from persona.repo import Repository
from persona.store import objects as obj

if TYPE_CHECKING:
    from persona.tensorio.source import ModelSource


def tree_source(repo: Repository, tree: obj.Tree, files: dict[str, bytes], architecture: str,
                tie_word_embeddings: bool, verify: bool = True) -> ModelSource:
    from persona.store.tensors import load_tensor
    from persona.tensorio.source import ModelSource, TensorInfo

    names = sorted(tree.entries)
    config = json.loads(files["config.json"]) if "config.json" in files else {}

    def open_tensors():
        for name in names:
            yield name, load_tensor(repo.objects, tree.entries[name].blob, verify=verify)

    def fetch(name: str):
        return load_tensor(repo.objects, tree.entries[name].blob, verify=verify)

    return ModelSource(
        path=None, config=config, files=files, architecture=architecture,
        tie_word_embeddings=tie_word_embeddings,
        tensors=[TensorInfo(n, tree.entries[n].dtype, tuple(tree.entries[n].shape)) for n in names],
        open_tensors=open_tensors, fetch_tensor=fetch,
    )


def files_dir(repo: Repository, base_id: str) -> Path:
    """A folder with the base's config and tokenizer files (cached by base id)."""
    base = repo.get(base_id, obj.Base)
    folder = repo.root / "cache" / "bases" / base_id
    for name, oid in base.files.items():
        target = folder / name
        if not target.is_file():
            atomic_write_bytes(target, repo.get_file(oid))
    return folder


def load_tokenizer(repo: Repository, base_id: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(files_dir(repo, base_id))


def load_causal_lm(repo: Repository, base_id: str, weights: str | None = None, dtype: Any = None,
                   device: str = "cpu"):
    """(model, tokenizer) for a base, or for a build's weights tree on that base."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from persona.store.tensors import load_tensor

    base = repo.get(base_id, obj.Base)
    tree = repo.get(weights or base.weights, obj.Tree)
    folder = files_dir(repo, base_id)
    config = AutoConfig.from_pretrained(folder)
    dtype = dtype or torch.float32
    # Built on the CPU (not the meta device) so buffers such as rotary tables are
    # real; the random init is then replaced by memory-mapped stored tensors.
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {name: load_tensor(repo.objects, entry.blob, verify=True).to(dtype)
             for name, entry in tree.entries.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - allowed_missing:
        from persona.errors import Incompatible

        raise Incompatible(f"stored weights do not fit {base.architecture}: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}", "re-import the base")
    if missing:
        model.tie_weights()
    model.to(device)
    model.eval()
    return model, load_tokenizer(repo, base_id)
