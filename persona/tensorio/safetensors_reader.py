"""Read ``.safetensors`` files over mmap, validating the header ourselves.

Why not ``safetensors.safe_open``: we want (1) one clear ``InvalidInput``
naming the file and the tensor for every way a header can lie, before any
data is touched, and (2) tensors that are views of the mapped file, so a
streaming merge reads each byte once and copies nothing.

Format: 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the data section; offsets are relative to the data section.

The mapping is private copy-on-write (``ACCESS_COPY``): tensors are writable
for torch's sake, but a caller that modifies one in place never changes the
file, and pages are only copied if written. If the kernel refuses that
(strict overcommit, a file larger than RAM) the mapping is read-only, and
writing into a returned tensor would fault: treat tensors as read-only.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import InvalidInput, NotFound
from persona.tensorio import dtypes
from persona.tensorio.source import TensorInfo

if TYPE_CHECKING:
    import torch

#: same cap as the reference implementation: a header is metadata, not data
MAX_HEADER_BYTES = 100_000_000

_HINT = "the file is corrupt or not a safetensors file; re-download or re-export it"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives inside the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.dtype, self.shape)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_header(path: Path, file_size: int, head: bytes) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    """Validate a header; return (entries by name, metadata, data section start).

    ``head`` must hold at least the first ``8 + N`` bytes of the file.
    """
    if file_size < 8:
        raise InvalidInput(f"{path}: too short to be a safetensors file ({file_size} bytes)", _HINT)
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > MAX_HEADER_BYTES:
        raise InvalidInput(f"{path}: implausible safetensors header length {n}", _HINT)
    if 8 + n > file_size:
        raise InvalidInput(
            f"{path}: header length {n} runs past the end of the file ({file_size} bytes)", _HINT
        )
    raw = head[8 : 8 + n]
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path}: safetensors header is not valid JSON ({exc})", _HINT) from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{path}: safetensors header is not a JSON object", _HINT)

    data_start = 8 + n
    data_len = file_size - data_start
    metadata_raw = header.pop("__metadata__", None)
    metadata = (
        {str(k): str(v) for k, v in metadata_raw.items()} if isinstance(metadata_raw, dict) else {}
    )

    entries: dict[str, TensorEntry] = {}
    for name, spec in header.items():
        entries[name] = _parse_entry(path, name, spec, data_len)

    # sweep in offset order, remembering the furthest-reaching tensor so far;
    # empty tensors occupy no bytes and cannot overlap anything
    furthest: TensorEntry | None = None
    for cur in sorted((e for e in entries.values() if e.end > e.begin), key=lambda e: (e.begin, e.end)):
        if furthest is not None and cur.begin < furthest.end:
            raise InvalidInput(
                f"{path}: tensor {cur.name} overlaps tensor {furthest.name} "
                f"(bytes {cur.begin}..{cur.end} vs {furthest.begin}..{furthest.end})",
                _HINT,
            )
        if furthest is None or cur.end > furthest.end:
            furthest = cur
    return entries, metadata, data_start


def _parse_entry(path: Path, name: str, spec: object, data_len: int) -> TensorEntry:
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"{path}: tensor {name}: {why}", _HINT)

    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise bad("entry must have exactly dtype, shape and data_offsets")
    dtype = spec["dtype"]
    if not isinstance(dtype, str) or not dtypes.is_known(dtype):
        raise bad(f"unknown dtype {dtype!r}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"shape must be a list of non-negative integers, got {shape!r}")
    offsets = spec["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"data_offsets must be two integers, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"data_offsets [{begin}, {end}] fall outside the data section ({data_len} bytes)")
    numel = 1
    for d in shape:
        numel *= d
    expected = numel * dtypes.itemsize(dtype)
    if end - begin != expected:
        raise bad(
            f"{end - begin} bytes stored but shape {shape} of {dtype} needs {expected}"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


class SafetensorsFile:
    """An open, validated ``.safetensors`` file. Use as a context manager.

    ``list()`` costs nothing but the header; ``tensor(name)`` and
    ``iter_tensors()`` return zero-copy views over the mapping. A tensor keeps
    the mapping alive after ``close()``; the pages go away with the last view.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidInput(f"{self.path} is a directory, not a safetensors file", "pass the file itself")
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"no such file: {self.path}", "check the path") from None
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 8, 0)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if 0 < n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head = os.pread(fd, 8 + n, 0)
            self.entries, self.metadata, self.data_start = parse_header(self.path, size, head)
            self.size = size
            # mmap of a zero-length region is an error; an all-header file has no data
            self._readonly = False
            self._map: mmap.mmap | None = None
            if size > self.data_start:
                try:
                    self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
                except OSError:
                    # strict overcommit can refuse a private writable mapping the
                    # size of a huge file; a shared read-only one costs no commit.
                    self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                    self._readonly = True
        finally:
            os.close(fd)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop our reference to the mapping.

        Never ``mmap.close()``: torch.frombuffer keeps a reference to the mmap
        object but no buffer export, so closing would unmap pages that live
        tensors still point at (a segfault). The mapping is unmapped when the
        last tensor view and this object are gone.
        """
        self._map = None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def list(self) -> list[TensorInfo]:
        """(name, dtype, shape) for every tensor, sorted by name, without reading data."""
        return [self.entries[n].info for n in self.names()]

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor as a view of the file (a copy only if its bytes are misaligned)."""
        import torch

        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"{self.path}: no tensor named {name}", "list the file's tensors to see the names")
        dtype = dtypes.torch_dtype(entry.dtype)
        numel = 1
        for d in entry.shape:
            numel *= d
        if numel == 0:
            return torch.empty(entry.shape, dtype=dtype)
        if self._map is None:
            raise InvalidInput(f"{self.path}: file was closed before tensor {name} was read",
                               "read tensors inside the `with` block that opened the file")
        start = self.data_start + entry.begin
        itemsize = dtypes.itemsize(entry.dtype)
        if start % itemsize == 0:
            with warnings.catch_warnings():
                # read-only fallback mapping: torch warns that writes would fault
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(self._map, dtype=dtype, count=numel, offset=start)
        else:
            # mmap is page-aligned, so this only happens when the writer packed an
            # odd-sized tensor before this one; torch needs aligned element access.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.frombuffer(
                    self._map, dtype=torch.uint8, count=entry.end - entry.begin, offset=start
                )
            flat = raw.clone().view(dtype)
        return flat.view(entry.shape)

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` in sorted order (or the order of ``names``)."""
        for name in self.names() if names is None else names:
            yield name, self.tensor(name)


def read_header(path: str | os.PathLike[str]) -> list[TensorInfo]:
    """The validated tensor listing of a file, without mapping its data."""
    with SafetensorsFile(path) as f:
        return f.list()
