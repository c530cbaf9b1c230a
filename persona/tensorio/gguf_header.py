"""A strict, fast walk over a GGUF file's header: metadata, tensor table, bounds.

Loading a GGUF through transformers takes many seconds and fails deep in its
stack on a damaged file. Walking the header ourselves first costs
milliseconds and turns a truncated download, a wrong file or a lying tensor
table into one ``InvalidInput`` naming the file. It also gives cheap access
to metadata (architecture, chat template) without building the tokenizer.

Layout (little-endian): ``GGUF`` magic, u32 version, u64 tensor count, u64
metadata count; metadata ``(string key, u32 type, value)``; tensor infos
``(string name, u32 n_dims, u64 dims[n_dims] (fastest first), u32 ggml type,
u64 offset)``; padding to ``general.alignment`` (default 32); tensor data.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from persona.errors import InvalidInput, NotFound

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
#: arrays longer than this are summarised as their length (vocabularies, merges)
KEEP_ARRAY_MAX = 64

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

_HINT = "the file is truncated or not a GGUF model; re-download it"


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # torch order (slowest dimension first)
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array, left unread: its element type and length."""

    element_type: int
    count: int


@dataclass
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, object]
    tensors: list[GgufTensor]
    data_start: int
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise InvalidInput(
                f"{self.path}: truncated GGUF header while reading {what} "
                f"(needs {n} bytes at offset {self.pos}, file has {self.size})",
                _HINT,
            )

    def unpack(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def string(self, what: str) -> str:
        (n,) = self.unpack("<Q", what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{self.path}: {what} is not valid UTF-8", _HINT) from None

    def skip_string(self, what: str) -> None:
        (n,) = self.unpack("<Q", what)
        self.need(n, what)
        self.pos += n

    def value(self, vtype: int, key: str) -> object:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], key)[0]
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY:
            etype, count = self.unpack("<IQ", key)
            if etype in _SCALARS:
                width = struct.calcsize(_SCALARS[etype])
                self.need(count * width, key)
                if count > KEEP_ARRAY_MAX:
                    self.pos += count * width
                    return ArraySummary(etype, count)
                return [self.value(etype, key) for _ in range(count)]
            if etype == _STRING:
                self.need(count * 8, key)  # at least a length per element
                if count > KEEP_ARRAY_MAX:
                    for _ in range(count):
                        self.skip_string(key)
                    return ArraySummary(etype, count)
                return [self.string(key) for _ in range(count)]
            raise InvalidInput(f"{self.path}: metadata {key} has unsupported array type {etype}", _HINT)
        raise InvalidInput(f"{self.path}: metadata {key} has unknown value type {vtype}", _HINT)


def _tensor_nbytes(path: Path, name: str, shape: tuple[int, ...], ggml_type: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise InvalidInput(f"{path}: tensor {name} has unknown ggml type {ggml_type}", _HINT) from None
    numel = 1
    for d in shape:
        numel *= d
    row = shape[-1] if shape else 1
    if row % block:
        raise InvalidInput(
            f"{path}: tensor {name} row length {row} is not a multiple of its block size {block}", _HINT
        )
    return numel // block * type_size


def read_gguf_header(path: str | os.PathLike[str]) -> GgufHeader:
    """Parse and bounds-check a GGUF header; no tensor data is read."""
    p = Path(path)
    if p.is_dir():
        raise InvalidInput(f"{p} is a directory, not a .gguf file", "pass the .gguf file itself")
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"no such file: {p}", "check the path") from None
    try:
        size = os.fstat(fd).st_size
        if size < 24:
            raise InvalidInput(f"{p}: too short to be a GGUF file ({size} bytes)", _HINT)
        buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        return _walk(p, buf)
    finally:
        buf.close()


def _walk(p: Path, buf: mmap.mmap) -> GgufHeader:
    cur = _Cursor(buf, p)
    if buf[:4] != MAGIC:
        raise InvalidInput(f"{p}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')", _HINT)
    cur.pos = 4
    (version,) = cur.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidInput(f"{p}: GGUF version {version} is not supported (2 or 3 are)", "re-convert the model")
    n_tensors, n_kv = cur.unpack("<QQ", "counts")
    # every entry takes at least 8 (+4) bytes, so counts beyond the file are lies
    if n_tensors > cur.size // 8 or n_kv > cur.size // 12:
        raise InvalidInput(f"{p}: implausible counts ({n_tensors} tensors, {n_kv} metadata keys)", _HINT)

    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        (vtype,) = cur.unpack("<I", key)
        metadata[key] = cur.value(vtype, key)

    raw_tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        (n_dims,) = cur.unpack("<I", name)
        if not 1 <= n_dims <= MAX_DIMS:
            raise InvalidInput(f"{p}: tensor {name} has {n_dims} dimensions", _HINT)
        dims = cur.unpack(f"<{n_dims}Q", name)
        ggml_type, offset = cur.unpack("<IQ", name)
        raw_tensors.append((name, tuple(reversed(dims)), ggml_type, offset))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment % 8:
        raise InvalidInput(f"{p}: bad general.alignment {alignment!r}", _HINT)
    data_start = -(-cur.pos // alignment) * alignment
    tensors: list[GgufTensor] = []
    seen: set[str] = set()
    for name, shape, ggml_type, offset in raw_tensors:
        if name in seen:
            raise InvalidInput(f"{p}: tensor {name} appears twice", _HINT)
        seen.add(name)
        nbytes = _tensor_nbytes(p, name, shape, ggml_type)
        if data_start + offset + nbytes > cur.size:
            raise InvalidInput(
                f"{p}: tensor {name} ends at byte {data_start + offset + nbytes} but the file has "
                f"{cur.size} bytes (truncated download?)",
                _HINT,
            )
        tensors.append(GgufTensor(name, shape, ggml_type, offset, nbytes))
    if "general.architecture" not in metadata:
        raise InvalidInput(f"{p}: no general.architecture in the GGUF metadata", _HINT)
    return GgufHeader(p, version, metadata, tensors, data_start, cur.size)
