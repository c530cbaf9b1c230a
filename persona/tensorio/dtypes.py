"""safetensors dtype names <-> torch dtypes, and element sizes.

The store and the CLI describe tensors with the safetensors names ("F32",
"BF16", ...): they are short, language-neutral and what the files say. The
table below is pure data so that code which only lists tensors never has to
import torch; ``torch_dtype`` imports it lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona.errors import InvalidInput

if TYPE_CHECKING:
    import torch

#: safetensors dtype name -> (bytes per element, torch attribute name)
_TABLE: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U64": (8, "uint64"),
    "U32": (4, "uint32"),
    "U16": (2, "uint16"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
}

#: the dtypes whose values can be NaN or infinite (checked on import)
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

SAFETENSORS_DTYPES = frozenset(_TABLE)


def is_known(name: str) -> bool:
    return name in _TABLE


def itemsize(name: str) -> int:
    """Bytes per element of a safetensors dtype."""
    try:
        return _TABLE[name][0]
    except KeyError:
        raise InvalidInput(
            f"unknown tensor dtype {name!r}",
            f"supported: {', '.join(sorted(_TABLE))}",
        ) from None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype name."""
    import torch

    itemsize(name)  # raises InvalidInput for unknown names
    return getattr(torch, _TABLE[name][1])


def from_torch(dtype: torch.dtype) -> str:
    """The safetensors name for a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    attr = str(dtype).removeprefix("torch.")
    for name, (_, torch_name) in _TABLE.items():
        if torch_name == attr:
            return name
    raise InvalidInput(
        f"tensor dtype {dtype} cannot be stored in safetensors",
        "convert it to float32, float16 or bfloat16 first",
    )


def from_user(text: str) -> str:
    """Accept what a user or a config writes ("bfloat16", "bf16", "torch.float16", "F32")."""
    key = text.strip().removeprefix("torch.").lower()
    aliases = {"fp32": "F32", "fp16": "F16", "half": "F16", "float": "F32", "double": "F64"}
    if key in aliases:
        return aliases[key]
    for name, (_, torch_name) in _TABLE.items():
        if key in (name.lower(), torch_name):
            return name
    raise InvalidInput(
        f"unknown dtype {text!r}",
        "use one of float32, float16, bfloat16",
    )
