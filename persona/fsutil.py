"""Crash-safe file writes: a unique temp file in the same directory, fsync, rename.

A reader never sees a half-written file: either the old content or the new one.
The directory is fsynced after the rename so the new name survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from persona.errors import StoreError


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(exc: OSError, path: Path | str) -> StoreError:
    """Turn an OSError into a one-line StoreError with a hint."""
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {path}", "free some space and run the command again")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"permission denied: {path}", "check the store's permissions (or use --store)")
    if exc.errno == errno.EROFS:
        return StoreError(f"read-only file system: {path}", "use a writable store location")
    return StoreError(f"cannot write {path}: {exc.strerror or exc}", "check the path and try again")


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on success it replaces ``path`` atomically."""
    path = Path(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise describe_os_error(exc, path) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise describe_os_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
