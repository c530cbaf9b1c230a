"""HF <-> GGUF tensor names and llama's Q/K row permutation, shared by reader and writer.

Names come from the gguf package's own table (``get_tensor_name_map``), the
one llama.cpp's converter uses, so we never maintain a copy. llama.cpp
stores the q and k projections with each head's rows reordered from HF's
"rotate half" RoPE layout to its interleaved one:
``reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2)``
(``n_head`` is the KV head count for k). Reading inverts it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona.errors import InvalidInput

if TYPE_CHECKING:
    import torch

LLAMA_ARCH = "llama"
_SUFFIXES = (".weight", ".bias")


def llama_name_map(n_layers: int):
    from gguf import MODEL_ARCH, get_tensor_name_map

    return get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)


def hf_to_gguf(name: str, name_map) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight`` (None if unknown)."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            base = name_map.get_name(name[: -len(suffix)])
            return None if base is None else base + suffix
    return None


def qk_heads(gguf_or_hf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads to permute for this tensor, or None if it is not q/k."""
    if gguf_or_hf_name.endswith(("attn_q.weight", "q_proj.weight")):
        return n_head
    if gguf_or_hf_name.endswith(("attn_k.weight", "k_proj.weight")):
        return n_head_kv
    return None


def _check(w: torch.Tensor, n_head: int) -> None:
    if w.shape[0] % (2 * n_head):
        raise InvalidInput(
            f"cannot split {w.shape[0]} rows into {n_head} rotary heads",
            "the config's head counts do not match the q/k weights",
        )


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF layout -> GGUF (llama.cpp) layout."""
    _check(w, n_head)
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GGUF (llama.cpp) layout -> HF layout; the exact inverse of ``permute_qk``."""
    _check(w, n_head)
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
