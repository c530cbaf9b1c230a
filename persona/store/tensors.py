"""Tensors in and out of blobs without extra copies.

Writing hands torch's own buffer to the store in chunks; reading wraps the
memory-mapped blob with ``torch.frombuffer``, so a tensor read from the store
costs page faults, not a copy. torch is imported lazily: history commands never
come here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from persona.errors import CorruptObject
from persona.store.object_store import CHUNK, ObjectStore

if TYPE_CHECKING:
    import torch


def dtype_name(dtype: torch.dtype) -> str:
    from persona.tensorio.dtypes import from_torch

    return from_torch(dtype)


def _chunks(buffer: memoryview) -> Iterator[memoryview]:
    for start in range(0, len(buffer), CHUNK):
        yield buffer[start : start + CHUNK]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is contiguous."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def put_tensor(store: ObjectStore, tensor: torch.Tensor) -> str:
    """Store one tensor as a blob; the same tensor always gets the same id."""
    data = tensor_bytes(tensor)
    return store.put_blob(dtype_name(tensor.dtype), tuple(tensor.shape), _chunks(data), len(data))


def load_tensor(store: ObjectStore, oid: str, verify: bool = False) -> torch.Tensor:
    """A read-only-in-spirit view of a stored tensor (private mapping: writes stay in memory)."""
    import torch

    from persona.tensorio.dtypes import torch_dtype

    view = store.open_blob(oid, verify=verify)
    layout = view.layout
    dtype = torch_dtype(layout.dtype)
    if layout.numel == 0:
        return torch.empty(layout.shape, dtype=dtype)
    try:
        flat = torch.frombuffer(view.buffer, dtype=torch.uint8)
    except (ValueError, TypeError) as exc:
        raise CorruptObject(f"blob {oid[:12]} cannot be read as a tensor: {exc}", "run `persona fsck`") from exc
    return flat.view(dtype).reshape(layout.shape)
