"""Write Hugging Face model directories: streaming safetensors shards + index.

Layout choice: ALWAYS sharded-with-index, even for one shard
(``model-00001-of-00001.safetensors`` + ``model.safetensors.index.json``).
One layout means one code path for every reader, and transformers loads it
like any hub checkpoint.

Streaming: tensors arrive one at a time and are appended to the current
shard's data file at once; the model is never held in memory. A shard's
header can only be written once its tensors are known, so when a shard is
full we write header + data into the final shard file, copying the data with
``os.copy_file_range`` (in-kernel, from the page cache; reflinked on CoW file
systems). The shard count is only known at the end, so shards get temporary
names and are renamed when the last tensor is in.

Deterministic bytes: the header holds only ``{"format": "pt"}`` metadata,
JSON with sorted keys, tensors in arrival order; the same input stream gives
the same files. Tensors are not reordered for alignment: safetensors readers
(ours included) cope with a tensor whose offset is not a multiple of its
element size.

``write_model_dir`` builds the whole directory in a temp dir next to the
target and renames it into place last, so a crash or Ctrl-C never leaves a
half-written model where the user asked for one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from persona.errors import Conflict, InvalidInput
from persona.fsutil import describe_os_error, fsync_dir
from persona.tensorio import dtypes

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_SHARD_BYTES = 2 * 1000**3
INDEX_NAME = "model.safetensors.index.json"
HEADER_METADATA = {"format": "pt"}
TIED_NAMES = ("lm_head.weight",)

Progress = Callable[[int], None]


def shard_name(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes of a tensor, without a copy when it is contiguous on CPU."""
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


def encode_header(entries: list[tuple[str, str, tuple[int, ...], int, int]]) -> bytes:
    """8-byte length + JSON header, padded with spaces so the data starts 8-aligned."""
    header: dict[str, object] = {"__metadata__": HEADER_METADATA}
    for name, dtype, shape, begin, end in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _copy_range(src, dst, count: int) -> None:
    """Append ``count`` bytes of ``src`` (from its start) to ``dst``, in the kernel when possible."""
    src.seek(0)
    remaining = count
    try:
        while remaining:
            done = os.copy_file_range(src.fileno(), dst.fileno(), remaining)
            if done == 0:
                break
            remaining -= done
    except (AttributeError, OSError):
        pass
    if remaining:
        src.seek(count - remaining)
        dst.seek(0, os.SEEK_END)
        shutil.copyfileobj(src, dst, 16 << 20)
        remaining = 0
    dst.seek(0, os.SEEK_END)


class ShardedSafetensorsWriter:
    """Feed ``add(name, tensor)`` one at a time, then ``finish()`` once.

    Writes into ``out_dir`` (which must exist); ``finish`` returns the
    weight map. On error call ``abort()`` to remove the partial files, or use
    it as a context manager, which aborts when the block raises.
    """

    def __init__(
        self,
        out_dir: str | Path,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        progress: Progress | None = None,
    ) -> None:
        if max_shard_bytes <= 0:
            raise InvalidInput(f"max shard size must be positive, got {max_shard_bytes}",
                               "e.g. --shard-size 2GB")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self.progress = progress
        self._sealed: list[tuple[Path, list[str]]] = []
        self._entries: list[tuple[str, str, tuple[int, ...], int, int]] = []
        self._data = None
        self._data_path: Path | None = None
        self._offset = 0
        self._names: set[str] = set()
        self.total_size = 0
        self._finished = False

    def __enter__(self) -> ShardedSafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and not self._finished:
            self.abort()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._finished:
            raise InvalidInput("writer already finished", "")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"tensor name must be a non-empty string, got {name!r}", "")
        if name in self._names:
            raise InvalidInput(f"tensor {name} written twice", "each tensor name must be unique")
        dtype = dtypes.from_torch(tensor.dtype)
        data = tensor_bytes(tensor)
        nbytes = data.nbytes
        if self._entries and self._offset + nbytes > self.max_shard_bytes:
            self._seal()
        if self._data is None:
            self._open_data()
        try:
            self._data.write(data)
        except OSError as exc:
            raise describe_os_error(exc, self._data_path) from exc
        self._entries.append((name, dtype, tuple(tensor.shape), self._offset, self._offset + nbytes))
        self._offset += nbytes
        self._names.add(name)
        self.total_size += nbytes
        if self.progress is not None:
            self.progress(nbytes)

    def _open_data(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".shard-data.", suffix=".tmp", dir=self.out_dir)
        self._data = os.fdopen(fd, "w+b")
        self._data_path = Path(tmp)

    def _seal(self) -> None:
        """Write the current shard (header + data) to a temp-named final file."""
        if self._data is None:
            self._open_data()
        assert self._data is not None and self._data_path is not None
        k = len(self._sealed) + 1
        path = self.out_dir / f".shard-{k:05d}.tmp"
        try:
            self._data.flush()
            with open(path, "wb") as out:
                out.write(encode_header(self._entries))
                out.flush()
                _copy_range(self._data, out, self._offset)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise describe_os_error(exc, path) from exc
        finally:
            self._data.close()
            self._data_path.unlink(missing_ok=True)
            self._data = None
            self._data_path = None
        self._sealed.append((path, [e[0] for e in self._entries]))
        self._entries = []
        self._offset = 0

    def finish(self) -> dict[str, str]:
        """Seal the last shard, give shards their final names, write the index."""
        if self._finished:
            raise InvalidInput("writer already finished", "")
        if not self._sealed and not self._entries:
            raise InvalidInput("no tensors to write", "a model needs at least one tensor")
        if self._entries or self._data is not None:
            self._seal()
        n = len(self._sealed)
        weight_map: dict[str, str] = {}
        try:
            for k, (tmp, names) in enumerate(self._sealed, start=1):
                final = shard_name(k, n)
                os.replace(tmp, self.out_dir / final)
                for name in names:
                    weight_map[name] = final
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            index_path = self.out_dir / INDEX_NAME
            with open(index_path, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise describe_os_error(exc, self.out_dir) from exc
        self._finished = True
        fsync_dir(self.out_dir)
        return weight_map

    def abort(self) -> None:
        """Remove every file this writer created (shards keep temp names until finish)."""
        if self._data is not None:
            self._data.close()
            self._data = None
        if self._data_path is not None:
            self._data_path.unlink(missing_ok=True)
        for tmp, _ in self._sealed:
            tmp.unlink(missing_ok=True)
        self._sealed = []


def _check_relative(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise InvalidInput(f"refusing to write file {name!r} outside the model directory", "")
    return p


def _tie_from_config(files: dict[str, bytes]) -> bool:
    if "config.json" not in files:
        raise InvalidInput("a model directory needs a config.json", "pass the base model's config")
    try:
        config = json.loads(files["config.json"])
    except ValueError as exc:
        raise InvalidInput(f"config.json is not valid JSON ({exc})", "") from None
    return bool(isinstance(config, dict) and config.get("tie_word_embeddings") is True)


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse to clobber a non-empty directory (or any file) unless forced."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise Conflict(f"{out_dir} exists and is not a directory", "choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise Conflict(f"{out_dir} already exists and is not empty", "pass --force to replace it")


def write_model_dir(
    out_dir: str | Path,
    files: dict[str, bytes],
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write config/tokenizer ``files`` and sharded ``tensors``; rename into place at the end.

    With ``tie_word_embeddings`` true in config.json, ``lm_head.weight`` is
    not written (transformers ties it to the embedding on load). Replacing an
    existing directory (``force``) swaps it aside, renames the new one in,
    then deletes the old: there is a brief moment with no directory at the
    target, never one with a partial model.
    """
    out = Path(out_dir).absolute()
    check_target(out, force)
    tie = _tie_from_config(files)
    rel = {name: _check_relative(name) for name in files}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise describe_os_error(exc, out) from exc
    writer = ShardedSafetensorsWriter(tmp, max_shard_bytes, progress)
    try:
        for name, data in sorted(files.items()):
            target = tmp / rel[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name, tensor in tensors:
            if tie and name in TIED_NAMES:
                continue
            writer.add(name, tensor)
        writer.finish()
        fsync_dir(tmp)
        _swap_into_place(tmp, out, force)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path, force: bool) -> None:
    check_target(out, force)  # again: another process may have written there meanwhile
    try:
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        raise describe_os_error(exc, out) from exc
    fsync_dir(out.parent)
