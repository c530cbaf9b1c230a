"""Refs: named pointers to objects, each update a compare-and-swap with a reflog.

Layout (like git): ``HEAD`` holds ``ref: refs/heads/main`` or a commit id;
``refs/heads/*`` are branches, ``refs/tags/*`` tags, ``refs/bases/*`` and
``refs/vectors/*`` name imported bases and vectors. Every change appends a JSON
line to ``logs/<ref>`` (and to ``logs/HEAD`` when HEAD follows that branch), so
nothing a ref ever pointed at is forgotten: rollback is undoable and gc keeps
what the reflog reaches.

Concurrency: a writer takes ``<ref>.lock`` with O_EXCL (it holds the owner's
pid), checks the current value against the one it expects, appends the reflog
line and replaces the ref through a temp file and a rename, then drops the lock.
A lock whose owner died (kill -9) is detected by its pid and broken, so a crash
never wedges the store.

Reflogs: appends take an exclusive ``flock`` on the log file, and ``gc``'s
expiry rewrites a log (temp file + rename) under the same lock; an appender
that waited on the old file notices the rename and appends to the new one, so
no line is lost to a concurrent expiry. A line torn by a full disk is skipped
by readers and the next append starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from persona import faults
from persona.errors import Conflict, InvalidInput, NotFound, StoreError
from persona.fsutil import atomic_write_bytes, describe_os_error, fsync_dir
from persona.ids import is_id_prefix, is_object_id

NAMESPACES = {"branch": "refs/heads", "tag": "refs/tags", "base": "refs/bases", "vector": "refs/vectors"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_RESERVED = {"HEAD", "ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD"}
ANY = object()  # expected-old sentinel: update whatever the ref holds now
LOCK_TIMEOUT_S = 10.0


def validate_name(name: str, what: str = "name") -> str:
    """Refuse names that could escape the refs folder or read as revision syntax."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"empty {what}", f"give the {what} as letters, digits, '.', '_' or '-'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidInput(f"{what} {name!r} contains control characters",
                           "use letters, digits, '.', '_' or '-'")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidInput(f"{what} {name!r} contains a path separator or '..'",
                           "use letters, digits, '.', '_' or '-'")
    if name in _RESERVED or name.endswith(".lock"):
        raise InvalidInput(f"{what} {name!r} is reserved", "choose another name")
    if not _NAME_RE.match(name):
        raise InvalidInput(f"invalid {what} {name!r}",
                           "start with a letter or digit; then letters, digits, '.', '_' or '-' (max 100)")
    if is_id_prefix(name.lower()) and re.fullmatch(r"[0-9a-fA-F]+", name):
        raise InvalidInput(f"{what} {name!r} looks like an object id",
                           "names made only of hex digits collide with id prefixes; add a letter")
    return name


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    time: float
    message: str

    def to_json(self) -> dict:
        return {"old": self.old, "new": self.new, "time": self.time, "message": self.message}


def _parse_entry(line: str) -> ReflogEntry | None:
    try:
        data = json.loads(line)
        return ReflogEntry(data["old"], data["new"], float(data["time"]), data["message"])
    except (ValueError, KeyError, TypeError):
        return None  # a torn line from a crash or a full disk


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a reflog expiry renames a new one over it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RefStore:
    """Refs and reflogs under a store directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------
    def ref_path(self, ref: str) -> Path:
        return self.root / ref

    def log_path(self, ref: str) -> Path:
        return self.root / "logs" / ref

    # -- reading ---------------------------------------------------------------
    def read_raw(self, ref: str) -> str | None:
        try:
            return self.ref_path(ref).read_text().strip() or None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None  # no such ref (a folder of refs is not one)
        except OSError as exc:
            raise describe_os_error(exc, self.ref_path(ref)) from exc

    def head_target(self) -> str | None:
        """The branch ref HEAD follows, or None when HEAD is detached."""
        raw = self.read_raw("HEAD")
        if raw and raw.startswith("ref: "):
            return raw[5:]
        return None

    def resolve(self, ref: str) -> str | None:
        """Follow symbolic refs to an object id (None for an unborn branch)."""
        seen = set()
        while True:
            if ref in seen:
                raise StoreError(f"symbolic ref loop at {ref}", "fix HEAD by hand")
            seen.add(ref)
            raw = self.read_raw(ref)
            if raw is None:
                return None
            if raw.startswith("ref: "):
                ref = raw[5:]
                continue
            if not is_object_id(raw):
                raise StoreError(f"ref {ref} holds garbage", "run `persona fsck`")
            return raw

    def list(self, namespace: str) -> dict[str, str]:
        prefix = NAMESPACES[namespace]
        folder = self.root / prefix
        out: dict[str, str] = {}
        if not folder.is_dir():
            return out
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.name.endswith(".lock") or not path.is_file():
                continue
            value = self.read_raw(f"{prefix}/{path.name}")
            if value and is_object_id(value):
                out[path.name] = value
        return out

    def all_refs(self) -> Iterator[tuple[str, str]]:
        """Every ref with its direct value (HEAD included, symbolic or not)."""
        head = self.read_raw("HEAD")
        if head:
            yield "HEAD", head
        for namespace, prefix in NAMESPACES.items():
            for name, value in self.list(namespace).items():
                yield f"{prefix}/{name}", value

    def reflog(self, ref: str) -> list[ReflogEntry]:
        path = self.log_path(ref)
        entries: list[ReflogEntry] = []
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return entries
        for line in lines:
            entry = _parse_entry(line)
            if entry is not None:  # a torn line from a crash: skip it, keep the rest
                entries.append(entry)
        return entries

    def reflog_refs(self) -> list[str]:
        logs = self.root / "logs"
        if not logs.is_dir():
            return []
        # Temp files of an expiry in progress (or left by a crash) are not logs.
        return sorted(str(p.relative_to(logs)) for p in logs.rglob("*")
                      if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".lock"))

    # -- locking ---------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, ref: str) -> Iterator[Path]:
        lock = self.ref_path(ref).with_name(self.ref_path(ref).name + ".lock")
        # The lock is born holding its owner's pid (written to a temp file, then
        # hard-linked into place, which fails if the name exists), so no other
        # process ever sees an empty lock it might take for a crashed one.
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{lock.name}.", suffix=".tmp", dir=lock.parent)
        except OSError as exc:
            raise describe_os_error(exc, lock) from exc
        mine = Path(name)
        try:
            try:
                _write_all(fd, f"pid {os.getpid()}\n".encode())
            finally:
                os.close(fd)
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            delay = 0.002
            while True:
                try:
                    os.link(mine, lock)
                    break
                except FileExistsError:
                    self._break_if_stale(lock)
                    if time.monotonic() > deadline:
                        raise Conflict(f"ref {ref} is locked by another persona process",
                                       f"wait and retry; if no persona is running, delete {lock}") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except OSError as exc:
            raise describe_os_error(exc, lock) from exc
        finally:
            mine.unlink(missing_ok=True)
        try:
            yield lock
        finally:
            # The lock only ever holds its owner's pid (the new value goes through
            # a temp file), so the name is ours until we remove it.
            lock.unlink(missing_ok=True)

    @staticmethod
    def _looks_stale(lock: Path) -> bool:
        try:
            text = lock.read_text()
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        pid = None
        if text.startswith("pid "):
            with contextlib.suppress(ValueError, IndexError):
                pid = int(text.split()[1])
        # A lock with a dead owner is left over from a crash; so is an empty or
        # unreadable one older than a few seconds (older versions wrote the pid
        # after creating the lock).
        return (pid is not None and not _pid_alive(pid)) or (pid is None and age > 5)

    @classmethod
    def _break_if_stale(cls, lock: Path) -> None:
        if not cls._looks_stale(lock):
            return
        # Breakers take turns (flock on the folder) and look again before
        # removing: otherwise one could delete the lock another breaker has just
        # broken and re-taken, and two writers would both "hold" the ref.
        try:
            fd = os.open(lock.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if cls._looks_stale(lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------
    def _append_log(self, ref: str, entry: ReflogEntry) -> None:
        path = self.log_path(ref)
        line = (json.dumps(entry.to_json(), sort_keys=True) + "\n").encode("utf-8")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if not _same_file(fd, path):
                        continue  # gc expired entries while we waited: append to the new file
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # never glue an entry onto a torn line
                    _write_all(fd, line)
                    os.fsync(fd)
                    return
                finally:
                    os.close(fd)
        except OSError as exc:
            raise describe_os_error(exc, path) from exc

    def expire_reflog(self, ref: str, drop: Callable[[ReflogEntry], bool]) -> list[ReflogEntry]:
        """Remove the entries ``drop`` selects (gc's expiry); returns them. Torn lines go too."""
        path = self.log_path(ref)
        try:
            while True:
                try:
                    fd = os.open(path, os.O_RDWR)
                except FileNotFoundError:
                    return []
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if not _same_file(fd, path):
                        continue
                    with open(fd, "rb", closefd=False) as handle:
                        lines = handle.read().decode("utf-8", errors="replace").splitlines()
                    kept: list[str] = []
                    dropped: list[ReflogEntry] = []
                    for text in lines:
                        entry = _parse_entry(text)
                        if entry is None:
                            continue
                        if drop(entry):
                            dropped.append(entry)
                        else:
                            kept.append(text)
                    if dropped:
                        atomic_write_bytes(path, "".join(t + "\n" for t in kept).encode("utf-8"))
                    return dropped
                finally:
                    os.close(fd)
        except OSError as exc:
            raise describe_os_error(exc, path) from exc

    def update(self, ref: str, new: str | None, expected: object = ANY, message: str = "",
               symbolic: bool = False) -> None:
        """Compare-and-swap ``ref`` to ``new`` (None deletes it).

        ``expected`` is the direct value the caller read (None: the ref must not
        exist); when the ref holds something else the update fails with Conflict
        and nothing changes.
        """
        with self._lock(ref):
            current = self.read_raw(ref)
            if expected is not ANY and current != expected:
                raise Conflict(f"ref {ref} changed under us (expected {str(expected)[:12]}, "
                               f"found {str(current)[:12]})", "another persona process moved it; retry")
            entry = ReflogEntry(None if current is None or current.startswith("ref: ") else current,
                                None if symbolic else new, time.time(), message)
            path = self.ref_path(ref)
            try:
                faults.checkpoint("ref.locked")
                if new is None:
                    if ref != "HEAD":
                        self._append_log(ref, entry)
                    path.unlink(missing_ok=True)
                    fsync_dir(path.parent)
                    return
                text = (f"ref: {new}" if symbolic else new) + "\n"
                # The reflog line first: a crash after it leaves a line about an
                # update that did not happen (harmless), never an update without one.
                if not symbolic:
                    self._append_log(ref, entry)
                    if ref != "HEAD" and self.head_target() == ref:
                        self._append_log("HEAD", entry)
                faults.checkpoint("ref.logged")
                atomic_write_bytes(path, text.encode("ascii"))
            except OSError as exc:
                raise describe_os_error(exc, path) from exc

    def delete_log(self, ref: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path(ref).unlink()


def require(value: str | None, what: str) -> str:
    if value is None:
        raise NotFound(f"{what} does not exist", "list what exists with `persona log` or `persona branch`")
    return value
