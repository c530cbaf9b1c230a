"""Byte layout of objects on disk and in memory.

Every object is stored exactly as it is hashed: ``<kind> <size>\\0`` followed by
the payload, uncompressed. Unlike git we do not zlib the content: tensors barely
compress, and an uncompressed blob can be memory-mapped and handed to torch
without a copy, which is what makes streaming merges fast.

A blob payload is one tensor and nothing else that could vary between
processes: a one-line header ``PTEN1 <dtype> <d0,d1,...>`` padded with spaces so
the raw little-endian data starts on a 64-byte boundary of the file (zero-copy
views need aligned data), then the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from persona.errors import CorruptObject
from persona.ids import object_header

KINDS = ("blob", "file", "tree", "base", "vector", "recipe", "commit", "build")
BLOB_MAGIC = b"PTEN1"
ALIGNMENT = 64

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


@dataclass(frozen=True)
class BlobLayout:
    """Where a tensor's data lies inside a blob's on-disk bytes."""

    dtype: str
    shape: tuple[int, ...]
    data_offset: int  # from the start of the on-disk object (header included)
    data_length: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def blob_prefix(dtype: str, shape: tuple[int, ...], data_length: int) -> tuple[bytes, bytes]:
    """Return (object header, tensor header) so that the data lands 64-byte aligned."""
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"unknown dtype {dtype}")
    base = BLOB_MAGIC + f" {dtype} {','.join(str(d) for d in shape)}".encode("ascii")
    # Each extra space moves the data by one byte (or two when the size gains a
    # digit), so some pad below two alignments always lands on the boundary.
    for pad in range(2 * ALIGNMENT + 2):
        tensor_header = base + b" " * pad + b"\n"
        obj_header = object_header("blob", len(tensor_header) + data_length)
        if (len(obj_header) + len(tensor_header)) % ALIGNMENT == 0:
            return obj_header, tensor_header
    raise AssertionError("unreachable: no padding aligns the blob header")


def parse_object_header(data: bytes | memoryview, oid: str = "?") -> tuple[str, int, int]:
    """Return (kind, payload size, payload offset) of an on-disk object."""
    head = bytes(data[:64])
    nul = head.find(b"\0")
    if nul < 0:
        raise CorruptObject(f"object {oid[:12]} has no header", "run `persona fsck`")
    try:
        kind, size_text = head[:nul].decode("ascii").split(" ")
        if not size_text.isdigit():
            raise ValueError(size_text)
        size = int(size_text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CorruptObject(f"object {oid[:12]} has a malformed header", "run `persona fsck`") from exc
    if kind not in KINDS:
        raise CorruptObject(f"object {oid[:12]} has unknown kind {kind!r}", "run `persona fsck`")
    return kind, size, nul + 1


def parse_blob_layout(data: bytes | memoryview, oid: str = "?") -> BlobLayout:
    """Read a blob's tensor header from the start of its on-disk bytes."""
    kind, size, offset = parse_object_header(data, oid)
    if kind != "blob":
        raise CorruptObject(f"object {oid[:12]} is a {kind}, not a tensor blob", "check the id")
    window = bytes(data[offset : offset + 4096])
    newline = window.find(b"\n")
    if newline < 0 or not window.startswith(BLOB_MAGIC):
        raise CorruptObject(f"blob {oid[:12]} has a malformed tensor header", "run `persona fsck`")
    try:
        fields = window[:newline].decode("ascii").split()
        dtype = fields[1]
        dims = fields[2].split(",") if len(fields) > 2 else []
        if not all(d.isdigit() for d in dims if d):
            raise ValueError(fields[2])
        shape = tuple(int(d) for d in dims if d)
    except (IndexError, ValueError) as exc:  # UnicodeDecodeError included
        raise CorruptObject(f"blob {oid[:12]} has a malformed tensor header", "run `persona fsck`") from exc
    if dtype not in DTYPE_SIZES:
        raise CorruptObject(f"blob {oid[:12]} has unknown dtype {dtype}", "run `persona fsck`")
    data_offset = offset + newline + 1
    data_length = size - (newline + 1)
    if data_length != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise CorruptObject(f"blob {oid[:12]} size does not match its shape", "run `persona fsck`")
    return BlobLayout(dtype, shape, data_offset, data_length)
