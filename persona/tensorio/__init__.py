"""tensorio: the only package that reads or writes model files.

Readers return a ``ModelSource`` (config + small files + a sorted stream of
named tensors); writers take one. Formats: safetensors (own mmap reader with
header validation), Hugging Face model directories, GGUF (llama), PEFT LoRA
adapters.

Importing this package does not import torch or transformers (the CLI's
history commands must stay fast): the names below resolve lazily, on first
use, to their submodules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ModelSource": "source",
    "TensorInfo": "source",
    "assert_finite": "source",
    "SafetensorsFile": "safetensors_reader",
    "open_model_dir": "hf_dir",
    "read_gguf": "gguf_reader",
    "read_gguf_header": "gguf_header",
    "read_lora_adapter": "peft_reader",
    "LoraAdapter": "peft_reader",
    "LoraFactor": "peft_reader",
    "ShardedSafetensorsWriter": "hf_writer",
    "write_model_dir": "hf_writer",
    "write_gguf": "gguf_writer",
}

__all__ = [
    "LoraAdapter",
    "LoraFactor",
    "ModelSource",
    "SafetensorsFile",
    "ShardedSafetensorsWriter",
    "TensorInfo",
    "assert_finite",
    "open_model_dir",
    "read_gguf",
    "read_gguf_header",
    "read_lora_adapter",
    "write_gguf",
    "write_model_dir",
]

if TYPE_CHECKING:
    from persona.tensorio.gguf_header import read_gguf_header
    from persona.tensorio.gguf_reader import read_gguf
    from persona.tensorio.gguf_writer import write_gguf
    from persona.tensorio.hf_dir import open_model_dir
    from persona.tensorio.hf_writer import ShardedSafetensorsWriter, write_model_dir
    from persona.tensorio.peft_reader import LoraAdapter, LoraFactor, read_lora_adapter
    from persona.tensorio.safetensors_reader import SafetensorsFile
    from persona.tensorio.source import ModelSource, TensorInfo, assert_finite


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'persona.tensorio' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"persona.tensorio.{module}"), name)
    globals()[name] = value
    return value
