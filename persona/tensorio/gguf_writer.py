"""Write a llama-architecture GGUF (llama.cpp / Ollama) from a ``ModelSource``.

Metadata follows llama.cpp's converter for ``LlamaForCausalLM``: the llama.*
hyper-parameters, a ``gpt2`` (byte-level BPE) tokenizer with tokens, token
types, merges, special ids and the chat template. Tensors are renamed with
the gguf package's name table and q/k rows permuted into llama.cpp's rotary
layout (``gguf_names``). 1-D tensors (norms) stay float32, as llama.cpp
expects; ``outtype`` applies to matrices: ``f32``, ``f16`` or ``q8_0``
(``gguf.quants.quantize``; rows not a multiple of 32 fall back to f16).

Streaming: the tensor table is declared from the source's listing, then each
tensor is converted and written as it arrives, so the model is never held in
memory. The file is written under a temp name and renamed at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import Conflict, InvalidInput
from persona.fsutil import describe_os_error, fsync_dir
from persona.tensorio import gguf_names
from persona.tensorio.source import ModelSource, TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import torch

OUTTYPES = ("f32", "f16", "q8_0")
TIED_NAMES = ("lm_head.weight",)
_HINT_ARCH = "only Llama-architecture models (LlamaForCausalLM, e.g. SmolLM2) can be written as GGUF"


def detect_tokenizer_pre(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json describes."""
    pre = tokenizer_json.get("pre_tokenizer") or {}

    def is_gpt2_bytelevel(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space")

    if is_gpt2_bytelevel(pre):
        return "gpt2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (
            len(parts) == 2
            and parts[0].get("type") == "Digits"
            and parts[0].get("individual_digits")
            and is_gpt2_bytelevel(parts[1])
        ):
            return "smollm"
    raise InvalidInput(
        f"cannot tell which llama.cpp pre-tokenizer matches {json.dumps(pre)[:120]}",
        "pass tokenizer_pre= (e.g. 'gpt2', 'smollm', 'llama-bpe') explicitly",
    )


def _tokenizer_metadata(source: ModelSource, vocab_size: int, tokenizer_pre: str | None) -> dict:
    from gguf import TokenType

    if "tokenizer.json" not in source.files:
        raise InvalidInput("the model has no tokenizer.json", "GGUF export needs a fast (tokenizers) tokenizer")
    tok = json.loads(source.files["tokenizer.json"])
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise InvalidInput(
            f"tokenizer model {model.get('type')!r} is not byte-level BPE",
            "GGUF export supports GPT-2 style byte-level BPE tokenizers (SmolLM2, Llama 3)",
        )
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["id"]: t for t in tok.get("added_tokens") or []}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    n = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [int(TokenType.UNUSED)] * n
    for text, i in vocab.items():
        tokens[i] = text
        if i in added:
            types[i] = int(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            types[i] = int(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    tok_cfg = json.loads(source.files.get("tokenizer_config.json", b"{}"))
    template = tok_cfg.get("chat_template")
    if "chat_template.jinja" in source.files:
        template = source.files["chat_template.jinja"].decode("utf-8")
    if not isinstance(template, str) or not template:
        raise InvalidInput("the model has no chat template", "GGUF export keeps the chat template; add one")

    def token_id(key: str) -> int | None:
        value = source.config.get(f"{key}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
        text = tok_cfg.get(f"{key}_token")
        if isinstance(text, dict):
            text = text.get("content")
        return vocab.get(text) if isinstance(text, str) else None

    return {
        "pre": tokenizer_pre or detect_tokenizer_pre(tok),
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "ids": {k: token_id(k) for k in ("bos", "eos", "unk", "pad")},
        "add_bos": bool(tok_cfg.get("add_bos_token", False)),
        "chat_template": template,
    }


def _llama_hparams(config: dict) -> dict:
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or (archs and archs[0] != "LlamaForCausalLM"):
        raise InvalidInput(f"model type {config.get('model_type')!r} / {archs} cannot be written as GGUF", _HINT_ARCH)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InvalidInput(f"RoPE scaling {rope.get('rope_type')!r} is not supported in GGUF export", _HINT_ARCH)
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        hp = {
            "context_length": int(config["max_position_embeddings"]),
            "embedding_length": hidden,
            "block_count": int(config["num_hidden_layers"]),
            "feed_forward_length": int(config["intermediate_size"]),
            "head_count": heads,
            "head_count_kv": int(config.get("num_key_value_heads") or heads),
            "rope_freq_base": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            "rms_eps": float(config.get("rms_norm_eps", 1e-6)),
            "vocab_size": int(config["vocab_size"]),
            "head_dim": int(config.get("head_dim") or hidden // heads),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"config.json lacks a usable {exc}", "the model config is incomplete") from None
    return hp


def _ggml_type(info: TensorInfo, outtype: str):
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(info.shape) <= 1 or outtype == "f32":
        return GGMLQuantizationType.F32
    if outtype == "q8_0" and info.shape[-1] % GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0] == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    numel = 1
    for d in shape:
        numel *= d
    return numel // block * size


def _encode(tensor: torch.Tensor, qtype) -> np.ndarray:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    data = tensor.detach().to("cpu").float().contiguous().numpy()
    if qtype == GGMLQuantizationType.F32:
        return data.astype(np.float32, copy=False)
    if qtype == GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return quantize(data, qtype)


def write_gguf(
    out_path: str | Path,
    source: ModelSource,
    outtype: str = "f16",
    *,
    name: str = "persona",
    tokenizer_pre: str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``source`` as a single-file GGUF at ``out_path`` (atomically)."""
    from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType

    if outtype not in OUTTYPES:
        raise InvalidInput(f"unknown GGUF outtype {outtype!r}", f"use one of {', '.join(OUTTYPES)}")
    out = Path(out_path).absolute()
    if out.exists() and (out.is_dir() or not force):
        raise Conflict(f"{out} already exists", "pass --force to replace it, or choose another path")
    hp = _llama_hparams(source.config)
    tok = _tokenizer_metadata(source, hp["vocab_size"], tokenizer_pre)
    tie = source.tie_word_embeddings
    name_map = gguf_names.llama_name_map(hp["block_count"])

    plan: list[tuple[str, str, object, TensorInfo]] = []  # hf name, gguf name, qtype, info
    for info in source.tensors:
        if tie and info.name in TIED_NAMES:
            continue
        gname = gguf_names.hf_to_gguf(info.name, name_map)
        if gname is None:
            raise InvalidInput(f"tensor {info.name} has no GGUF name in the llama layout", _HINT_ARCH)
        plan.append((info.name, gname, _ggml_type(info, outtype), info))
    by_name = {hf: (g, q, info) for hf, g, q, info in plan}

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = GGUFWriter(tmp, gguf_names.LLAMA_ARCH)
    try:
        writer.add_name(name)
        writer.add_context_length(hp["context_length"])
        writer.add_embedding_length(hp["embedding_length"])
        writer.add_block_count(hp["block_count"])
        writer.add_feed_forward_length(hp["feed_forward_length"])
        writer.add_head_count(hp["head_count"])
        writer.add_head_count_kv(hp["head_count_kv"])
        writer.add_rope_freq_base(hp["rope_freq_base"])
        writer.add_layer_norm_rms_eps(hp["rms_eps"])
        writer.add_vocab_size(hp["vocab_size"])
        writer.add_rope_dimension_count(hp["head_dim"])
        if hp["head_dim"] != hp["embedding_length"] // hp["head_count"]:
            writer.add_key_length(hp["head_dim"])
            writer.add_value_length(hp["head_dim"])
        writer.add_file_type(
            {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype]
        )
        writer.add_quantization_version(GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        for key, setter in (
            ("bos", writer.add_bos_token_id),
            ("eos", writer.add_eos_token_id),
            ("unk", writer.add_unk_token_id),
            ("pad", writer.add_pad_token_id),
        ):
            if tok["ids"][key] is not None:
                setter(tok["ids"][key])
        writer.add_add_bos_token(tok["add_bos"])
        writer.add_chat_template(tok["chat_template"])

        import numpy as np

        for _hf, gname, qtype, info in plan:
            writer.add_tensor_info(gname, info.shape, np.dtype(np.float32), _nbytes(info.shape, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()

        written = 0
        for hf, tensor in source.iter_tensors():
            if hf not in by_name:
                continue
            gname, qtype, info = by_name[hf]
            if tuple(tensor.shape) != info.shape:
                raise InvalidInput(f"tensor {hf} has shape {tuple(tensor.shape)}, listed as {info.shape}",
                                   "the build's tensors changed while writing: build again")
            heads = gguf_names.qk_heads(hf, hp["head_count"], hp["head_count_kv"])
            if heads is not None:
                tensor = gguf_names.permute_qk(tensor, heads)
            data = _encode(tensor, qtype)
            writer.write_tensor_data(data)
            written += 1
            if progress is not None:
                progress(data.nbytes)
        if written != len(plan):
            raise InvalidInput(f"the source yielded {written} of {len(plan)} tensors", "the model is incomplete")
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise describe_os_error(exc, out) from exc
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out
