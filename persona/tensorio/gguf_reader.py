"""A GGUF file -> ``ModelSource`` (config, tokenizer files, float32 tensors by HF name).

Order of work, cheapest first, so a bad file fails fast:

1. ``gguf_header`` walks and bounds-checks the header (milliseconds): a
   truncated or foreign file is one ``InvalidInput``;
2. the config comes from the header's llama metadata (``llama_config``),
   the tokenizer and its embedded chat template from transformers'
   converter (``PreTrainedTokenizerFast``), as ``from_pretrained(gguf_file=)``
   would;
3. tensors are dequantised lazily, one at a time as they are streamed
   (``gguf.quants.dequantize``), renamed with the gguf package's name table
   and, for q/k, un-permuted back to HF's layout.

Why not ``AutoConfig`` / ``AutoModelForCausalLM.from_pretrained(gguf_file=)``:
on SmolLM2 they spend ~20-25 s (each re-parses every vocabulary string with
numpy, the model load rebuilds the name table per submodule) and hold the
whole float32 model; this path opens in ~1-2 s and streams one tensor at a
time (~2 s of dequantisation in all). The slow test checks config and
tensors against transformers' own load, tensor for tensor. Only the
llama architecture (SmolLM2, Llama, Mistral-style files) is supported, the
same scope as ``gguf_writer``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import InvalidInput
from persona.tensorio import gguf_names
from persona.tensorio.gguf_header import GgufHeader, GgufTensor, read_gguf_header
from persona.tensorio.source import ModelSource, TensorInfo, TensorStream

if TYPE_CHECKING:
    import torch

TIED_NAMES = ("lm_head.weight",)
#: keys transformers writes into tokenizer_config.json from the load call, not the model
_LOAD_ONLY_KEYS = ("is_local", "local_files_only", "gguf_file", "name_or_path", "_from_pipeline")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars and info logs; the CLI draws its own."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if was_enabled:
            hf_logging.enable_progress_bar()


def _read_dir(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _restore_pre_tokenizer(files: dict[str, bytes], gguf_pre: object) -> None:
    """Put back the digit split that transformers' GGUF converter drops.

    llama.cpp's ``smollm`` pre-tokenizer isolates every digit before the
    GPT-2 regex (as SmolLM2's own tokenizer.json does); transformers converts
    it to a plain ByteLevel, so "2024" would count as one or two tokens where
    the model sees four. Token counts (compaction, AER) must match the model.
    """
    if gguf_pre != "smollm":
        return
    data = json.loads(files["tokenizer.json"])
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel":
        return
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, pre],
    }
    files["tokenizer.json"] = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")


def tokenizer_files(
    path: Path, max_length: int | None = None, gguf_pre: object = None
) -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja converted from a GGUF.

    Uses the fast tokenizer class directly: AutoTokenizer would first parse
    the whole file again just to pick a class (seconds) and land here anyway.
    The embedded chat template is kept verbatim (SmolLM2's injects a default
    system prompt when none is given; that is the model's behaviour).
    """
    _offline()
    from transformers import PreTrainedTokenizerFast

    with _quiet():
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
        except (ValueError, KeyError, NotImplementedError) as exc:
            raise InvalidInput(f"{path}: cannot convert the GGUF tokenizer ({exc})",
                               "transformers' GGUF loader lacks this tokenizer type: import the model's "
                               "Hugging Face directory instead") from None
    if not tok.chat_template:
        raise InvalidInput(
            f"{path}: the GGUF has no chat template (tokenizer.chat_template)",
            "use an instruct/chat model's GGUF",
        )
    with tempfile.TemporaryDirectory(prefix="persona-tok-") as tmp:
        tok.save_pretrained(tmp)
        files = _read_dir(Path(tmp))
    cfg = json.loads(files["tokenizer_config.json"])
    for key in _LOAD_ONLY_KEYS:
        cfg.pop(key, None)
    if max_length is not None:
        cfg["model_max_length"] = max_length
    files["tokenizer_config.json"] = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()
    _restore_pre_tokenizer(files, gguf_pre)
    return files


#: GGUF llama metadata (after the ``llama.`` prefix) -> LlamaConfig argument
_LLAMA_KEYS = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
    "attention.key_length": "head_dim",
}
_TOKEN_KEYS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
}
_REQUIRED = ("embedding_length", "block_count", "attention.head_count", "feed_forward_length")


def llama_config(header: GgufHeader):
    """A ``LlamaConfig`` from the GGUF's llama metadata, without re-parsing the file.

    ``AutoConfig.from_pretrained(gguf_file=)`` gives the same config (the
    slow test compares them) but parses every vocabulary string with numpy
    first: ~5-12 s on SmolLM2 against nothing here.
    """
    from transformers import LlamaConfig

    meta = header.metadata
    prefix = f"{gguf_names.LLAMA_ARCH}."
    missing = [k for k in _REQUIRED if prefix + k not in meta]
    if missing:
        raise InvalidInput(f"{header.path}: GGUF metadata lacks {prefix}{missing[0]}", "the file is incomplete")
    scaling = sorted(k for k in meta if k.startswith(prefix + "rope.scaling."))
    if scaling:
        raise InvalidInput(
            f"{header.path}: RoPE scaling ({scaling[0]}) is not supported for GGUF import",
            "import the model from its Hugging Face directory instead",
        )
    kwargs: dict = {}
    for key, arg in _LLAMA_KEYS.items():
        if prefix + key in meta:
            kwargs[arg] = meta[prefix + key]
    for key, arg in _TOKEN_KEYS.items():
        if key in meta:
            kwargs[arg] = meta[key]
    if "vocab_size" not in kwargs:
        tokens = meta.get("tokenizer.ggml.tokens")
        kwargs["vocab_size"] = tokens.count if hasattr(tokens, "count") else len(tokens or [])
    names = {t.name for t in header.tensors}
    kwargs["tie_word_embeddings"] = "output.weight" not in names
    kwargs["attention_bias"] = "blk.0.attn_q.bias" in names
    kwargs.setdefault("head_dim", kwargs["hidden_size"] // kwargs["num_attention_heads"])
    return LlamaConfig(architectures=["LlamaForCausalLM"], **kwargs)


def config_json(config) -> bytes:
    """config.json bytes without loader-only private keys."""
    data = json.loads(config.to_json_string(use_diff=True))
    data = {k: v for k, v in data.items() if not k.startswith("_") and k != "quantization_config"}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def generation_config_json(config) -> bytes:
    from transformers import GenerationConfig

    gen = GenerationConfig.from_model_config(config)
    data = json.loads(gen.to_json_string(use_diff=True))
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _hf_names(config) -> list[str]:
    """The parameter names transformers' class for this config owns (no weights allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), _quiet():
        model = AutoModelForCausalLM.from_config(config)
    return list(model.state_dict())


def read_gguf(path: str | os.PathLike[str]) -> ModelSource:
    """Open a llama-architecture GGUF; tensors dequantise to float32 as they stream."""
    p = Path(path).absolute()
    header = read_gguf_header(p)
    if header.architecture != gguf_names.LLAMA_ARCH:
        raise InvalidInput(
            f"{p}: GGUF architecture {header.architecture!r} is not supported (only llama)",
            "convert the model to a Hugging Face directory and import that",
        )
    config = llama_config(header)
    files = tokenizer_files(
        p, config.max_position_embeddings, header.metadata.get("tokenizer.ggml.pre")
    )
    hf_names = _hf_names(config)
    config.dtype = "float32"
    files["config.json"] = config_json(config)
    files["generation_config.json"] = generation_config_json(config)
    tie = bool(getattr(config, "tie_word_embeddings", False))

    by_gguf = {t.name: t for t in header.tensors}
    name_map = gguf_names.llama_name_map(config.num_hidden_layers)
    plan: dict[str, GgufTensor] = {}
    for hf in hf_names:
        if tie and hf in TIED_NAMES:
            continue
        g = gguf_names.hf_to_gguf(hf, name_map)
        if g is None or g not in by_gguf:
            raise InvalidInput(f"{p}: no GGUF tensor for {hf} (looked for {g})", "the file is incomplete")
        plan[hf] = by_gguf.pop(g)
    if by_gguf:
        raise InvalidInput(
            f"{p}: GGUF tensors with no place in {config.architectures[0]}: {sorted(by_gguf)[:5]}",
            "the file does not match its own metadata",
        )
    n_head = config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = sorted(plan)
    listing = [TensorInfo(n, "F32", plan[n].shape) for n in names]

    def fetch(name: str) -> torch.Tensor:
        return _dequantize(header, plan[name], name, n_head, n_head_kv)

    def open_tensors() -> TensorStream:
        for n in names:
            yield n, fetch(n)

    warnings = []
    if any(plan[n].ggml_type not in (0, 1, 30) for n in names):
        warnings.append(f"{p}: weights are quantised in the GGUF; imported dequantised to float32")
    return ModelSource(
        path=p,
        config=json.loads(files["config.json"]),
        files=files,
        architecture=config.architectures[0],
        tie_word_embeddings=tie,
        tensors=listing,
        open_tensors=open_tensors,
        warnings=warnings,
        fetch_tensor=fetch,
    )


def _dequantize(header: GgufHeader, t: GgufTensor, hf_name: str, n_head: int, n_head_kv: int) -> torch.Tensor:
    import numpy as np
    import torch
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize, quant_shape_to_byte_shape

    qtype = GGMLQuantizationType(t.ggml_type)
    start = header.data_start + t.offset
    raw = np.memmap(header.path, dtype=np.uint8, mode="r", offset=start, shape=(t.nbytes,))
    try:
        values = dequantize(raw.reshape(quant_shape_to_byte_shape(t.shape, qtype)), qtype)
    except NotImplementedError:
        raise InvalidInput(
            f"{header.path}: tensor {hf_name} uses {qtype.name}, which the gguf package cannot dequantise",
            "use a GGUF quantised with a common type (F16, Q8_0, Q4_K, ...)",
        ) from None
    # F32 tensors come back as views of the read-only map: copy them (torch wants writable)
    values = np.array(values, dtype=np.float32, copy=not values.flags.writeable or values.dtype != np.float32)
    w = torch.from_numpy(values).reshape(t.shape)
    heads = gguf_names.qk_heads(hf_name, n_head, n_head_kv)
    if heads is not None:
        w = gguf_names.unpermute_qk(w, heads).contiguous()
    return w
