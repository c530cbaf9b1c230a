"""Object stores: where content-addressed objects live.

``DiskObjectStore`` keeps each object in ``objects/ab/cdef...`` exactly as it is
hashed; ``MemoryObjectStore`` is its in-memory twin used by fast tests. Both pass
the same contract tests (tests/test_object_store_contract.py).

Writes never rewrite an existing object: data goes to a unique temp file in the
object's directory, is fsynced, and is hard-linked into place (``os.link`` fails
if the name exists, so a racing writer of the same content is harmless). A crash
leaves at most a ``.tmp`` file that ``gc`` removes.

Storing an object that already exists *freshens* it (its mtime becomes now), as
git does: gc deletes an unreachable object only when it is older than the grace
period, so a writer that reuses an old unreferenced object (the same tensor, a
cached build) protects it from a concurrent gc before pointing anything at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from persona import faults
from persona.errors import CorruptObject, NotFound, StoreError
from persona.fsutil import describe_os_error, fsync_dir
from persona.ids import hash_object, is_object_id, object_header
from persona.store.codec import BlobLayout, blob_prefix, parse_blob_layout, parse_object_header
from persona.store.verify_cache import VerifyCache

CHUNK = 8 << 20


@dataclass(frozen=True)
class BlobView:
    """A tensor's bytes as a buffer (mmap-backed on disk) plus its layout."""

    oid: str
    layout: BlobLayout
    buffer: memoryview  # the data only, layout.data_length bytes


class ObjectStore(Protocol):
    def put(self, kind: str, payload: bytes) -> str: ...
    def put_blob(self, dtype: str, shape: tuple[int, ...], chunks: Iterable[memoryview | bytes],
                 data_length: int) -> str: ...
    def get(self, oid: str) -> tuple[str, bytes]: ...
    def open_blob(self, oid: str, verify: bool = False) -> BlobView: ...
    def has(self, oid: str) -> bool: ...
    def freshen(self, oid: str) -> bool: ...
    def kind_of(self, oid: str) -> str: ...
    def iter_ids(self) -> Iterator[str]: ...
    def prefetch(self, oid: str) -> None: ...
    def size(self, oid: str) -> int: ...
    def mtime(self, oid: str) -> float: ...
    def delete(self, oid: str) -> None: ...
    def verify(self, oid: str) -> None: ...


def _check_id(oid: str) -> None:
    if not is_object_id(oid):
        raise NotFound(f"not an object id: {oid!r}", "ids are 64 lowercase hex digits")


def _verify_bytes(oid: str, data: bytes | memoryview) -> None:
    if hashlib.sha256(data).hexdigest() != oid:
        raise CorruptObject(
            f"object {oid[:12]} is corrupt: its bytes no longer hash to its id",
            "run `persona fsck` to list damaged objects; restore them from a backup or re-import",
        )


def _split(oid: str, data: bytes) -> tuple[str, bytes]:
    """(kind, payload) of an object's verified bytes; its header must account for every byte."""
    kind, size, offset = parse_object_header(data, oid)
    if len(data) != offset + size:
        raise CorruptObject(f"object {oid[:12]} has the wrong length", "run `persona fsck`")
    return kind, data[offset : offset + size]


class DiskObjectStore:
    """Objects as files under ``root/ab/cdef...``."""

    def __init__(self, root: Path, verify_cache: VerifyCache | None = None) -> None:
        self.root = Path(root)
        # Blob files known to hash to their id (see verify_cache): open_blob(verify=True)
        # skips re-hashing those, and put_blob records what it writes.
        self.verify_cache = verify_cache

    def path(self, oid: str) -> Path:
        return self.root / oid[:2] / oid[2:]

    def has(self, oid: str) -> bool:
        return is_object_id(oid) and self.path(oid).is_file()

    def freshen(self, oid: str) -> bool:
        """Set an existing object's mtime to now; False when it is not (or no longer) there.

        A writer about to reuse an object calls this first, so gc (which only
        deletes objects older than its grace period, and re-checks the mtime
        just before each deletion) leaves it and everything it points to alone.
        """
        if not is_object_id(oid):
            return False
        try:
            os.utime(self.path(oid))
        except FileNotFoundError:
            return False
        except OSError:
            # A read-only store cannot be freshened, and gc cannot delete from it either.
            return self.path(oid).is_file()
        return True

    def _link_into_place(self, tmp: Path, oid: str) -> bool:
        """Link ``tmp`` in as ``oid``; False when another writer's file was there first."""
        final = self.path(oid)
        linked = False
        try:
            os.link(tmp, final)
            linked = True
            faults.checkpoint("object.linked")
        except FileExistsError:
            pass
        except OSError as exc:
            raise describe_os_error(exc, final) from exc
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)
        return linked

    def _temp_in(self, directory: Path) -> tuple[int, Path]:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".obj.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise describe_os_error(exc, directory) from exc
        return fd, Path(name)

    def put(self, kind: str, payload: bytes) -> str:
        oid = hash_object(kind, payload)
        if self.freshen(oid):
            return oid
        fd, tmp = self._temp_in(self.path(oid).parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(object_header(kind, len(payload)))
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o444)
            faults.checkpoint("object.write")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise describe_os_error(exc, self.path(oid)) from exc
        self._link_into_place(tmp, oid)
        return oid

    def put_blob(self, dtype: str, shape: tuple[int, ...], chunks: Iterable[memoryview | bytes],
                 data_length: int) -> str:
        obj_header, tensor_header = blob_prefix(dtype, tuple(shape), data_length)
        fd, tmp = self._temp_in(self.root / "incoming")
        digest = hashlib.sha256(obj_header)
        written = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(obj_header)
                handle.write(tensor_header)
                digest.update(tensor_header)
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                if written != data_length:
                    raise ValueError(f"blob data is {written} bytes, expected {data_length}")
                oid = digest.hexdigest()
                if self.freshen(oid):
                    tmp.unlink(missing_ok=True)
                    return oid
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o444)
            self.path(oid).parent.mkdir(parents=True, exist_ok=True)
            faults.checkpoint("object.write")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise describe_os_error(exc, self.root) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self._link_into_place(tmp, oid) and self.verify_cache is not None:
            # hashed as it was written: the file in place is known good as it stands now
            # (not so a racing writer's file that got there first: it is hashed when read)
            with contextlib.suppress(OSError):
                self.verify_cache.remember(oid, os.stat(self.path(oid)))
        return oid

    def _read_all(self, oid: str) -> bytes:
        _check_id(oid)
        try:
            return self.path(oid).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"object {oid[:12]} is missing from the store",
                           "run `persona fsck`; restore the store from a backup") from exc
        except OSError as exc:
            raise StoreError(f"cannot read object {oid[:12]}: {exc.strerror}", "check permissions") from exc

    def get(self, oid: str) -> tuple[str, bytes]:
        data = self._read_all(oid)
        _verify_bytes(oid, data)
        return _split(oid, data)

    def kind_of(self, oid: str) -> str:
        _check_id(oid)
        try:
            with open(self.path(oid), "rb") as handle:
                head = handle.read(64)
        except FileNotFoundError as exc:
            raise NotFound(f"object {oid[:12]} is missing from the store", "run `persona fsck`") from exc
        return parse_object_header(head, oid)[0]

    def open_blob(self, oid: str, verify: bool = False) -> BlobView:
        _check_id(oid)
        try:
            with open(self.path(oid), "rb") as handle:
                st = os.fstat(handle.fileno())
                if st.st_size == 0:
                    raise CorruptObject(f"object {oid[:12]} is empty", "run `persona fsck`")
                # ACCESS_COPY: a private mapping, writable for torch.frombuffer,
                # but no write ever reaches the file.
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError as exc:
            raise NotFound(f"object {oid[:12]} is missing from the store", "run `persona fsck`") from exc
        view = memoryview(mapped)
        if verify:
            cache = self.verify_cache
            if cache is None or not cache.known(oid, st):
                _verify_bytes(oid, view)
                if cache is not None:
                    cache.remember(oid, st)
        layout = parse_blob_layout(view, oid)
        if layout.data_offset + layout.data_length > len(view):
            raise CorruptObject(f"blob {oid[:12]} is truncated", "run `persona fsck`")
        return BlobView(oid, layout, view[layout.data_offset : layout.data_offset + layout.data_length])

    def prefetch(self, oid: str) -> None:
        """Ask the kernel to start reading an object into the page cache, without waiting.

        Why: a merge alternates reading a tensor (I/O) and merging it (CPU);
        announcing the next tensor's files while the current one is merged lets
        the disk work during the compute instead of after it.
        """
        if not is_object_id(oid) or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self.path(oid), os.O_RDONLY)
        except OSError:
            return  # a missing object is reported by the read that needs it
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def iter_ids(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for entry in sorted(sub.iterdir()):
                oid = sub.name + entry.name
                if is_object_id(oid):
                    yield oid

    def size(self, oid: str) -> int:
        return self.path(oid).stat().st_size

    def mtime(self, oid: str) -> float:
        return self.path(oid).stat().st_mtime

    def delete(self, oid: str) -> None:
        _check_id(oid)
        with contextlib.suppress(FileNotFoundError):
            self.path(oid).unlink()

    def verify(self, oid: str) -> None:
        _check_id(oid)
        digest = hashlib.sha256()
        try:
            with open(self.path(oid), "rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
        except FileNotFoundError as exc:
            raise NotFound(f"object {oid[:12]} is missing", "run `persona fsck`") from exc
        if digest.hexdigest() != oid:
            raise CorruptObject(f"object {oid[:12]} is corrupt: its bytes no longer hash to its id",
                                "restore it from a backup or re-import what made it")
        with open(self.path(oid), "rb") as handle:
            head = handle.read(4096)
        kind, size, offset = parse_object_header(head, oid)
        if self.size(oid) != offset + size:
            raise CorruptObject(f"object {oid[:12]} has the wrong length", "run `persona fsck`")

    def stale_temp_files(self, older_than: float) -> list[Path]:
        """Leftovers of interrupted writes, for gc (a concurrent writer's may vanish as we look)."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than
        stale = []
        for path in self.root.rglob(".obj.*.tmp"):
            try:
                if path.stat().st_mtime < cutoff:
                    stale.append(path)
            except FileNotFoundError:
                continue
        return stale


class MemoryObjectStore:
    """The in-memory twin of DiskObjectStore: same contract, no files."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._mtimes: dict[str, float] = {}

    def has(self, oid: str) -> bool:
        return oid in self._objects

    def freshen(self, oid: str) -> bool:
        if oid not in self._objects:
            return False
        self._mtimes[oid] = time.time()
        return True

    def _store(self, oid: str, data: bytes) -> str:
        if oid not in self._objects:
            self._objects[oid] = data
        self._mtimes[oid] = time.time()
        return oid

    def put(self, kind: str, payload: bytes) -> str:
        oid = hash_object(kind, payload)
        return self._store(oid, object_header(kind, len(payload)) + bytes(payload))

    def put_blob(self, dtype: str, shape: tuple[int, ...], chunks: Iterable[memoryview | bytes],
                 data_length: int) -> str:
        obj_header, tensor_header = blob_prefix(dtype, tuple(shape), data_length)
        data = b"".join(bytes(c) for c in chunks)
        if len(data) != data_length:
            raise ValueError(f"blob data is {len(data)} bytes, expected {data_length}")
        full = obj_header + tensor_header + data
        return self._store(hashlib.sha256(full).hexdigest(), full)

    def _raw(self, oid: str) -> bytes:
        _check_id(oid)
        try:
            return self._objects[oid]
        except KeyError as exc:
            raise NotFound(f"object {oid[:12]} is missing from the store", "run `persona fsck`") from exc

    def get(self, oid: str) -> tuple[str, bytes]:
        data = self._raw(oid)
        _verify_bytes(oid, data)
        return _split(oid, data)

    def kind_of(self, oid: str) -> str:
        return parse_object_header(self._raw(oid), oid)[0]

    def open_blob(self, oid: str, verify: bool = False) -> BlobView:
        data = bytearray(self._raw(oid))  # writable copy, like the private mapping
        view = memoryview(data)
        if verify:
            _verify_bytes(oid, view)
        layout = parse_blob_layout(view, oid)
        return BlobView(oid, layout, view[layout.data_offset : layout.data_offset + layout.data_length])

    def prefetch(self, oid: str) -> None:
        """Nothing to read ahead: the objects are in memory."""

    def iter_ids(self) -> Iterator[str]:
        yield from sorted(self._objects)

    def size(self, oid: str) -> int:
        return len(self._raw(oid))

    def mtime(self, oid: str) -> float:
        self._raw(oid)
        return self._mtimes[oid]

    def delete(self, oid: str) -> None:
        self._objects.pop(oid, None)
        self._mtimes.pop(oid, None)

    def verify(self, oid: str) -> None:
        data = self._raw(oid)
        _verify_bytes(oid, data)
        kind, size, offset = parse_object_header(data, oid)
        if len(data) != offset + size:
            raise CorruptObject(f"object {oid[:12]} has the wrong length", "run `persona fsck`")

    def corrupt_for_test(self, oid: str, data: bytes) -> None:
        """Replace an object's bytes (only tests call this)."""
        self._objects[oid] = data

    def stale_temp_files(self, older_than: float) -> list[Path]:
        return []
